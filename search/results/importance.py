"""Which hyperparameters mattered: Optuna's importance evaluator on the finished trials.

Whatever algorithm ran the trials, their values and scores go into an in-memory Optuna study
(the ranges each hyperparameter took are read off the trials), and fANOVA
(`optuna.importance.FanovaImportanceEvaluator`) splits the objective's variance between
them. Written as importance.csv and importance.png, and logged on the search's MLflow run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd

from search.results import plots
from search.runs import atomic
from search.runs.layout import SpaceDir

MIN_TRIALS = 3  # fewer completed trials than this say nothing


@dataclasses.dataclass
class Importance:
    method: str
    trials: int
    table: pd.DataFrame  # hyperparameter, importance (shares summing to 1), most important first
    files: list[Path]


def _distribution(values: list[Any]) -> Any:
    import optuna.distributions as d

    if all(isinstance(v, bool) for v in values) or not all(isinstance(v, (int, float)) for v in values):
        return d.CategoricalDistribution(sorted({v for v in values}, key=str))
    low, high = min(values), max(values)
    if all(isinstance(v, int) for v in values):
        return d.IntDistribution(int(low), int(high))
    return d.FloatDistribution(float(low), float(high))


def compute(records: list[dict[str, Any]], objective: str, seed: int = 0) -> tuple[pd.DataFrame, int] | None:
    """(table, trials used), or None when too few trials finished or nothing varied."""
    import optuna

    done = [r for r in records if r.get("status") == "COMPLETED" and (r.get("best") or {}).get(objective) is not None
            and math.isfinite(r["best"][objective])]
    if len(done) < MIN_TRIALS:
        return None
    names = sorted({k for r in done for k in (r.get("values") or {})})
    varying = {}
    for name in names:
        values = [r["values"][name] for r in done if name in r.get("values", {})]
        if len(values) == len(done) and len({str(v) for v in values}) > 1:
            varying[name] = _distribution(values)
    if not varying:
        return None
    from search import metrics

    direction = optuna.study.StudyDirection.MINIMIZE if metrics.direction(objective) == "min" \
        else optuna.study.StudyDirection.MAXIMIZE
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=direction)
    for r in done:
        params = {name: r["values"][name] for name in varying}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=varying, value=float(r["best"][objective])))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    table = pd.DataFrame({"hyperparameter": list(found), "importance": [round(float(v), 4) for v in found.values()]})
    return table, len(done)


def write(records: list[dict[str, Any]], folder: SpaceDir, objective: str) -> Importance | None:
    computed = compute(records, objective)
    if computed is None:
        return None
    table, trials = computed
    csv = atomic.write_with(folder.importance_csv, lambda tmp: table.to_csv(tmp, index=False))
    png = plot(table, folder.importance_plot, title=f"{folder.name}: what {objective} depended on ({trials} trials)")
    return Importance("fANOVA", trials, table, [csv, png])


def plot(table: pd.DataFrame, path: Path, *, title: str) -> Path:
    drawn = plots.figure(7, 0.8 + 0.35 * len(table))
    axes = drawn.add_subplot()
    shown = table.iloc[::-1]
    axes.barh(shown["hyperparameter"], shown["importance"], color="C0")
    axes.set_xlabel("share of the objective's variance (fANOVA)")
    axes.set_xlim(0, 1)
    axes.grid(True, axis="x", alpha=0.3)
    axes.set_title(title, fontsize=10)
    return plots.save(drawn, path)


def log_to_run(folder: SpaceDir, found: Importance) -> None:
    """importance_<name> metrics on the search's MLflow run (the files go with the report's)."""
    from search.tracking import client as clients

    run = clients.search_run(folder)
    if run is None:
        return
    try:
        client = clients.connect(run[0])
        for name, value in zip(found.table["hyperparameter"], found.table["importance"]):
            client.log_metric(run[1], f"importance_{name}", float(value))
    except Exception:  # noqa: BLE001 - the files on disk and their artifacts are what matters
        pass
