"""A search's results on disk: one `result.json` per trial, `trials.csv` over all of them.

Each trial's record is written as soon as it ends, so a search killed at any point keeps
every finished trial; `trials.csv` is rebuilt from those records, never appended to.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from search.hooks import COMPLETED, SearchHooks, SearchInfo, TrialInfo, TrialResult

METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, payload: Any) -> None:
    """Write atomically: a kill mid-write leaves the previous file, never half of one."""
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # per process: workers share space dirs
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def trial_record(trial: TrialInfo, result: TrialResult) -> dict[str, Any]:
    return {
        "trial_id": trial.trial_id,
        "number": trial.number,
        "status": result.status,
        "values": trial.values,
        "config": trial.config.as_dict(),
        "best": {k: _clean(v) for k, v in result.best.items()},
        "epochs_run": result.epochs_run,
        "seconds": round(result.seconds, 2),
        "seconds_per_epoch": result.seconds_per_epoch,
        "images_per_second": result.images_per_second,
        "params": result.params,
        "size_mb": result.size_mb,
        "model_path": str(result.model_path) if result.model_path else None,
        "val_probabilities_path": str(result.val_probabilities_path) if result.val_probabilities_path else None,
        "error": result.error,
        "history": {k: [_clean(x) for x in v] for k, v in result.history.items()},
    }


def load_records(space_dir: Path) -> list[dict[str, Any]]:
    """Every trial's record, in trial order."""
    records = []
    for path in sorted((space_dir / "trials").glob("*/result.json")):
        records.append(json.loads(path.read_text()))
    return records


def trials_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: id, status, every hyperparameter, best metrics, cost and size."""
    rows = []
    for r in records:
        row: dict[str, Any] = {"trial_id": r["trial_id"], "status": r["status"]}
        row.update(r["config"])
        row.update({m: r["best"].get(m) for m in METRICS})
        row.update({
            "epochs_run": r["epochs_run"],
            "seconds": r["seconds"],
            "params": r["params"],
            "size_mb": r["size_mb"],
            "error": r["error"],
        })
        rows.append(row)
    return pd.DataFrame(rows)


def write_trials_csv(space_dir: Path) -> pd.DataFrame:
    table = trials_table(load_records(space_dir))
    tmp = space_dir / f"trials.csv.{os.getpid()}.tmp"
    table.to_csv(tmp, index=False)
    os.replace(tmp, space_dir / "trials.csv")
    return table


def leaderboard(table: pd.DataFrame, objective: str, *, top: int = 5) -> pd.DataFrame:
    """The best completed trials by the objective, with the columns worth reading."""
    if table.empty or objective not in table:
        return table
    done = table[table["status"] == COMPLETED]
    ascending = "loss" in objective
    best = done.sort_values(objective, ascending=ascending).head(top)
    varying = [c for c in table.columns if c not in ("trial_id", "status", "error", *METRICS)
               and c not in ("epochs_run", "seconds", "params", "size_mb") and table[c].nunique(dropna=False) > 1]
    columns = ["trial_id", objective, *[m for m in ("val_loss", "val_accuracy") if m != objective], *varying,
               "epochs_run", "seconds", "params", "size_mb"]
    return best[[c for c in columns if c in best]]


class ResultsWriter(SearchHooks):
    """Writes each trial's record and refreshes trials.csv: for drivers other than SpaceTuner
    (which writes them itself, ordered against Keras Tuner's own state)."""

    def on_trial_end(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> None:
        trial.dir.mkdir(parents=True, exist_ok=True)
        write_json(trial.dir / "result.json", trial_record(trial, result))
        write_trials_csv(search.space_dir)
