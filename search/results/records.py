"""A search's results on disk: one `result.json` per trial, `trials.csv` over all of them.

Each trial's record is written (atomically) the moment it ends, so a search killed at any
point keeps every finished trial; `trials.csv` is rebuilt from those records, never
appended to. A record that cannot be read (damaged by hand, a disk that lost it) is named
once and left out; it never stops a search or a report.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from search import metrics
from search.core.hooks import TrialInfo, TrialResult
from search.core.record import TrialRecord, from_json, to_json
from search.core.status import COMPLETED
from search.liveness import workers
from search.models.applicable import applicable
from search.runs import atomic
from search.runs.layout import SpaceDir, TrialDir
from search.runs.locks import FolderLock

log = logging.getLogger("search")

# The metrics trials.csv and the leaderboard show, best-epoch values.
COLUMNS = tuple(metrics.METRICS)
# A metric's standard deviation over the folds of a k-fold trial: `<metric>_fold_std`.
FOLD_STD = "_fold_std"
# history["stage"] of a trial with a frozen stage (search.engine.trial's PROBE, FINE_TUNE).
STAGES = {1.0: "probe", 2.0: "fine_tune"}
FINISHED = (COMPLETED, "PRUNED")  # a trial that trained and was scored
_warned: set[Path] = set()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def trial_record(trial: TrialInfo, result: TrialResult) -> TrialRecord:
    return TrialRecord(
        trial_id=trial.trial_id,
        number=trial.number,
        worker=str(workers.this_worker()),
        status=result.status,
        values=trial.values,
        config=trial.config.as_dict(),
        model=trial.model,
        best={k: _clean(v) for k, v in result.best.items()},
        epochs_run=result.epochs_run,
        seconds=round(result.seconds, 2),
        seconds_per_epoch=result.seconds_per_epoch,
        images_per_second=result.images_per_second,
        params=result.params,
        size_mb=result.size_mb,
        model_path=str(result.model_path) if result.model_path else None,
        val_probabilities_path=str(result.val_probabilities_path) if result.val_probabilities_path else None,
        error=result.error,
        note=result.note,
        history={k: [_clean(x) for x in v] for k, v in result.history.items()},
    )


def result_of(record: dict[str, Any]) -> TrialResult:
    """The TrialResult a record was written from (to report a trial ended by an earlier process)."""
    def path(key: str) -> Path | None:
        return Path(record[key]) if record.get(key) else None

    return TrialResult(
        status=record["status"], history={k: [x for x in v if x is not None] for k, v in record.get("history", {}).items()},
        epochs_run=int(record.get("epochs_run") or 0), seconds=float(record.get("seconds") or 0.0),
        best={k: v for k, v in (record.get("best") or {}).items() if v is not None}, params=record.get("params"),
        size_mb=record.get("size_mb"), model_path=path("model_path"), val_probabilities_path=path("val_probabilities_path"),
        error=record.get("error"), note=record.get("note"),
    )


def model_of(record: dict[str, Any]) -> str:
    """A record's backbone, or "build_model" for a model of the space's own."""
    return str(record.get("model") or (record.get("config") or {}).get("backbone", "?"))


def write_record(trial: TrialInfo, result: TrialResult) -> Path:
    return atomic.write_json(TrialDir(trial.dir).record, to_json(trial_record(trial, result)))


def read_record(trial: TrialDir) -> dict[str, Any] | None:
    """A trial's record as result.json's keys; None when there is none or it cannot be read."""
    record = read_trial(trial)
    return None if record is None else to_json(record)


def read_trial(trial: TrialDir) -> TrialRecord | None:
    """A trial's record; None when there is none or it cannot be read (said once per file)."""
    path = trial.record
    if not path.is_file():
        return None
    try:
        record = from_json(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        if path not in _warned:
            _warned.add(path)
            log.warning("%s cannot be read (%s); that trial is left out. Delete the file to run the trial again.",
                        path, type(e).__name__)
        return None
    return record


def load_records(space_dir: Path | SpaceDir) -> list[dict[str, Any]]:
    """Every readable trial record, in trial order."""
    folder = space_dir if isinstance(space_dir, SpaceDir) else SpaceDir(Path(space_dir))
    return [r for r in (read_record(t) for t in folder.trial_dirs()) if r is not None]


def _damaged(folder: SpaceDir) -> list[str]:
    """The trials whose record is there but cannot be read."""
    return [t.path.name for t in folder.trial_dirs() if t.record.is_file() and read_record(t) is None]


def _rows_kept(folder: SpaceDir, trial_ids: list[str]) -> pd.DataFrame:
    """Those trials' rows of the trials.csv on disk (none when it cannot be read either)."""
    if not trial_ids:
        return pd.DataFrame()
    try:
        before = pd.read_csv(folder.trials_csv, dtype={"trial_id": str})
    except (OSError, ValueError, pd.errors.ParserError):
        return pd.DataFrame()
    return before[before["trial_id"].isin(trial_ids)] if "trial_id" in before else pd.DataFrame()


def folder_table(space_dir: Path | SpaceDir) -> pd.DataFrame:
    """trials.csv as it is rebuilt: a row per readable record, and for a record that cannot be
    read (torn, emptied) the row trials.csv already had, so a damaged file costs no trial its row."""
    folder = space_dir if isinstance(space_dir, SpaceDir) else SpaceDir(Path(space_dir))
    table = trials_table(load_records(folder))
    kept = _rows_kept(folder, _damaged(folder))
    if kept.empty:
        return table
    table = pd.concat([table, kept], ignore_index=True) if not table.empty else kept.reset_index(drop=True)
    order = sorted(table["trial_id"], key=lambda t: (len(t), t))
    return table.set_index("trial_id").loc[order].reset_index()


def trials_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: id, status, every hyperparameter, best metrics, cost and size."""
    rows = []
    for r in records:
        row: dict[str, Any] = {"trial_id": r["trial_id"], "status": r["status"]}
        row.update(applicable(r.get("config", {}), model_of(r), r.get("values")))
        row["backbone"] = model_of(r)
        best = r.get("best") or {}
        row.update({m: best.get(m) for m in COLUMNS})
        row.update({m: v for m, v in best.items() if m.endswith(FOLD_STD)})  # a k-fold search's spreads
        row["stage"] = STAGES.get(float(best.get("stage") or 0))  # staged trials: the stage of the best epoch
        row.update({
            "epochs_run": r.get("epochs_run"),
            "seconds": r.get("seconds"),
            "params": r.get("params"),
            "size_mb": r.get("size_mb"),
            "error": r.get("error"),
        })
        if r.get("worker"):
            row["worker"] = r["worker"]
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["trial_id", "status"])


def write_trials_csv(space_dir: Path | SpaceDir, *, locked: bool = False) -> pd.DataFrame:
    """Rebuild trials.csv from the records (`folder_table`), under the folder's table lock
    (workers share it) unless the caller holds it."""
    folder = space_dir if isinstance(space_dir, SpaceDir) else SpaceDir(Path(space_dir))
    if locked:
        table = folder_table(folder)
        atomic.write_with(folder.trials_csv, lambda tmp: table.to_csv(tmp, index=False))
        return table
    with FolderLock(folder.table_lock, doing="rewriting trials.csv", wait=120):
        return write_trials_csv(folder, locked=True)


def leaderboard(table: pd.DataFrame, objective: str, *, top: int = 5) -> pd.DataFrame:
    """The best completed trials by the objective, with the columns worth reading."""
    if table.empty or objective not in table:
        return table
    done = table[table["status"] == COMPLETED]
    best = done.sort_values(objective, ascending=metrics.direction(objective) == "min").head(top)
    shown = [m for m in ("val_accuracy", "val_f1", "val_loss") if m != objective and table[m].notna().any()]
    spreads = [c for c in table.columns if c.endswith(FOLD_STD)]
    fixed = ("trial_id", "status", "error", "worker", "epochs_run", "seconds", "params", "size_mb", *COLUMNS, *spreads)
    varying = [c for c in table.columns if c not in fixed and table[c].nunique(dropna=False) > 1]
    spread = [objective + FOLD_STD] if objective + FOLD_STD in table else []
    columns = ["trial_id", objective, *spread, *shown, *varying, "epochs_run", "seconds", "params", "size_mb"]
    return best[[c for c in columns if c in best]]
