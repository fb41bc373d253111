"""best.keras and best.json follow the trial records.

Each finished trial copies its model to best.keras when it beats the one there. A process
stopped between a trial's record and that copy (a full disk, a kill) leaves best.keras on
an older trial; a search's next start puts the best recorded trial's model back there.
"""

from __future__ import annotations

import json
from typing import Any

from search import metrics
from search.results.records import load_records
from search.runs import atomic
from search.runs.layout import SpaceDir
from search.runs.locks import FolderLock


def _kept(folder: SpaceDir) -> dict[str, Any] | None:
    try:
        best = json.loads(folder.best_record.read_text())
    except (OSError, ValueError):
        return None
    return best if isinstance(best, dict) and "trial_id" in best else None


def follow_records(folder: SpaceDir, objective: str) -> str | None:
    """Copy the best recorded trial's model to best.keras when the one there is not it; its trial id, or None."""
    with FolderLock(folder.table_lock, doing="updating best.keras and trials.csv", wait=120):
        top: dict[str, Any] | None = None
        for record in load_records(folder):
            score = (record.get("best") or {}).get(objective)
            if record["status"] != "COMPLETED" or score is None or not folder.trial(record["trial_id"]).model.is_file():
                continue
            if top is None or metrics.better(score, top["best"][objective], objective):
                top = record
        kept = _kept(folder)
        if top is None or (kept is not None and kept["trial_id"] == top["trial_id"] and folder.best_model.is_file()):
            return None
        score = top["best"][objective]
        if kept is not None and folder.best_model.is_file() and not metrics.better(score, kept.get("score"), objective):
            return None  # ties keep the earlier trial, as the search does
        atomic.copy_file(folder.trial(top["trial_id"]).model, folder.best_model)
        atomic.write_json(folder.best_record, {"trial_id": top["trial_id"], "score": score, "objective": objective})
        return str(top["trial_id"])
