"""The study's journal file (runs/<space>/optuna.journal) when it cannot be read.

Optuna replays a journal line by line; a journal holding anything else (random bytes, a
file copied over it) stops that replay with a decoding error, and the whole study with it.
Such a journal is kept aside (optuna.journal.damaged-<time>) and a new one started; the
first time the search then asks for a trial, the study is rebuilt from the trial records
(trials/<id>/result.json): each recorded trial is added again under its own number, with its
values and result, so that no finished trial is lost or run again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

from search.results.records import load_records
from search.runs.layout import SpaceDir
from search.runs.locks import FolderLock

# What Optuna's replay raises on lines that are not its own: bytes that are not UTF-8 or
# not JSON (ValueError), JSON that is not a journal operation (KeyError, TypeError, ...).
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError)
RECORDED = ("COMPLETED", "PRUNED", "FAILED")


def open_journal(path: Path, repair_torn_tail: Callable[[Path], None]) -> optuna.storages.JournalStorage:
    """The journal storage at `path`; a journal that cannot be replayed is kept aside and a new one
    started. `repair_torn_tail` cuts a last line torn by an interrupted write from a readable one."""
    try:
        optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except _UNREADABLE as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    else:
        repair_torn_tail(path)  # Optuna skips a torn last line, but would append right after it
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    lock = JournalFileSymlinkLock(str(path))  # the lock every append takes: no worker writes meanwhile
    lock.acquire()
    try:
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))  # another worker set it aside first
        except _UNREADABLE:
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            path.touch()
    finally:
        lock.release()
    print(f"warning: {path} cannot be read as an Optuna journal ({why}); it is kept as {aside.name}, and the "
          "study is rebuilt from the trial records in trials/.", file=sys.stderr, flush=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def rebuild(study: optuna.Study, folder: SpaceDir, suggest: Callable[[optuna.Trial], Any],
            values_of: Callable[[dict[str, Any]], list[float] | None]) -> int:
    """Add the recorded trials to a study that has none, each under its own number; how many.

    `suggest(trial)` suggests the space's values (the recorded ones, enqueued), `values_of(record)`
    gives a record's objective values (None: it failed)."""
    if study.get_trials(deepcopy=False):
        return 0
    with FolderLock(folder.path / ".journal-rebuild.lock", doing="rebuilding the Optuna study", wait=600):
        if study.get_trials(deepcopy=False):
            return 0  # another worker rebuilt it
        recorded = {int(r["trial_id"]): r for r in load_records(folder)
                    if r["status"] in RECORDED and str(r["trial_id"]).isdigit()}
        for number in range(max(recorded, default=-1) + 1):
            record = recorded.get(number)
            if record is None:  # never recorded (killed, or damaged): a place-holder that uses no budget
                trial = study.ask()
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                continue
            study.enqueue_trial(dict(record.get("values") or {}), user_attrs={"kt_trial_id": f"{number:04d}"})
            trial = study.ask()
            suggest(trial)
            values = values_of(record)
            if record["status"] == "PRUNED" and len(study.directions) == 1:
                study.tell(trial, state=TrialState.PRUNED)
            elif values is None:
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, values)
    if recorded:
        print(f"Optuna study {study.study_name!r} rebuilt from {len(recorded)} trial record(s).", flush=True)
    return len(recorded)
