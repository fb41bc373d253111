"""The Pareto front of a multi-objective search: the objective against size or latency.

A search with `Search(minimize="params" | "size_mb" | "latency_ms")` trades its objective
(val accuracy) against a cost. The front is the set of completed trials that no other trial
beats on both; `pareto.csv` lists it (cheapest first) and `pareto.png` draws every trial with
the front highlighted. Computed from the trial records, so it needs no Optuna storage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from search import metrics
from search.core.status import COMPLETED
from search.results import plots
from search.results.records import load_records, model_of
from search.runs import atomic
from search.runs.layout import SpaceDir

COST_LABELS = metrics.COSTS


def front_table(records: list[dict[str, Any]], objective: str, cost: str) -> pd.DataFrame:
    """Completed trials with `objective` and `cost`, and whether each is on the front."""
    rows = []
    for r in records:
        value = r["best"].get(objective)
        spent = r["best"].get(cost) if cost == "latency_ms" else r.get(cost)
        if r["status"] == COMPLETED and value is not None and spent is not None:
            rows.append({"trial_id": r["trial_id"], "backbone": model_of(r), objective: value,
                         cost: spent, "epochs_run": r["epochs_run"]})
    table = pd.DataFrame(rows, columns=["trial_id", "backbone", objective, cost, "epochs_run"])
    sign = 1 if metrics.direction(objective) == "min" else -1  # both columns made "lower is better"
    score, spend = (sign * table[objective]).to_numpy(), table[cost].to_numpy()
    table["on_front"] = [
        not any((score <= score[i]) & (spend <= spend[i]) & ((score < score[i]) | (spend < spend[i])))
        for i in range(len(table))
    ]
    return table.sort_values([cost, objective], ascending=[True, metrics.direction(objective) == "min"]
                             ).reset_index(drop=True)


def write_pareto(space_dir: Path, records: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write pareto.csv and pareto.png for a multi-objective search; [] for a single-objective one.
    `records` default to the folder's own trials (a shared study: every worker's, see
    search.tracking.study)."""
    folder = SpaceDir(space_dir)
    try:
        settings = json.loads(folder.record.read_text()).get("settings", {})
    except (OSError, ValueError):
        settings = {}
    cost = settings.get("minimize")
    if not cost:
        return []
    objective = settings.get("objective", "val_accuracy")
    table = front_table(load_records(folder) if records is None else records, objective, cost)
    front = table[table["on_front"]].drop(columns="on_front")
    csv = atomic.write_with(folder.pareto_csv, lambda tmp: front.to_csv(tmp, index=False))
    with pd.option_context("display.width", 200):
        print(f"\nPareto front of {space_dir.name!r}: {objective} against {cost}, "
              f"{len(front)} of {len(table)} completed trials\n"
              f"{front.to_string(index=False) if len(front) else '(no completed trials)'}")
    return [csv, plot_front(table, objective, cost, folder.pareto_plot, title=space_dir.name)]


def plot_front(table: pd.DataFrame, objective: str, cost: str, path: Path, *, title: str = "") -> Path:
    drawn = plots.figure(7, 4.5)
    axes = drawn.add_subplot()
    rest, front = table[~table["on_front"]], table[table["on_front"]]
    axes.scatter(rest[cost], rest[objective], color="0.6", label="trial")
    axes.step(front[cost], front[objective], where="post", color="C3", alpha=0.6)
    axes.scatter(front[cost], front[objective], color="C3", zorder=3, label="Pareto front")
    for _, row in front.iterrows():
        axes.annotate(f"{row['trial_id']} {row['backbone'] or ''}", (row[cost], row[objective]), fontsize=7,
                      xytext=(4, -10), textcoords="offset points")
    if cost == "params":
        axes.set_xscale("log")
    axes.set_xlabel(COST_LABELS.get(cost, cost))
    axes.set_ylabel(objective)
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title(f"{title}: what each {COST_LABELS.get(cost, cost).split(' (')[0]} buys".strip(": "))
    return plots.save(drawn, path)


def latency_ms(model: Any, runs: int = 10) -> float:
    """Median wall time of one single-image forward pass, in milliseconds."""
    image = np.zeros((1, *model.input_shape[1:]), dtype="float32")
    for _ in range(2):  # the first calls trace and allocate
        model(image, training=False)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model(image, training=False)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)
