"""The study's journal file (runs/<space>/optuna.journal) when it cannot be read.

Optuna replays a journal line by line; a journal holding anything else (random bytes, a
file copied over it) stops that replay with a decoding error, and the whole study with it.
Such a journal is kept aside (optuna.journal.damaged-<time>) and a new one started; the
search then gives the new study every trial recorded in trials/<id>/result.json (see
search.engine.runner), so that no finished trial is lost or run again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock


# What Optuna's replay raises on lines that are not its own: bytes that are not UTF-8 or
# not JSON (ValueError), JSON that is not a journal operation (KeyError, TypeError, ...).
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError)


def open_journal(path: Path, repair_torn_tail: Callable[[Path], bool]) -> optuna.storages.JournalStorage:
    """The journal storage at `path`; a journal that cannot be replayed is kept aside and a new one
    started. `repair_torn_tail` cuts a last line torn by an interrupted write from a readable one."""
    try:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except _UNREADABLE as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    else:
        # Optuna skips a torn last line, but would append right after it: cut, then read again.
        return optuna.storages.JournalStorage(JournalFileBackend(str(path))) if repair_torn_tail(path) else storage
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

