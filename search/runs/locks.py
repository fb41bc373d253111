"""Advisory locks on files in a runs folder, and who holds them.

`FolderLock` is an `flock` on a lock file: the kernel releases it when its holder dies, so a
lock of a killed process is taken over by the next one without anyone deciding it is
stale. Each holder also leaves a small record (who, since when, doing what) beside the
lock, so a process that cannot have it says who does; records of dead holders are dropped.
Exclusive holders exclude everyone; shared holders only exclude exclusive ones (the
workers of one Optuna study share a runs folder, a Keras Tuner search owns it).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from search.liveness import workers
from search.errors import SearchError


class LockBusy(SearchError):
    """The lock is held by another process."""

    def __init__(self, message: str, holders: list[dict[str, Any]]):
        super().__init__(message)
        self.holders = holders


def describe(holder: dict[str, Any]) -> str:
    worker = holder.get("worker") or {}
    return (f"{holder.get('doing', 'a process')} (pid {worker.get('pid', '?')} on {worker.get('host', '?')}, "
            f"since {holder.get('since', '?')})")


class FolderLock:
    """`with FolderLock(path, doing="search.run")`: exclusive; `shared=True` for shared holders."""

    def __init__(self, path: Path, *, doing: str, shared: bool = False, wait: float = 0.0):
        self.path, self.doing, self.shared, self.wait = Path(path), doing, shared, wait
        self._fd: int | None = None
        self._record: Path | None = None

    @property
    def _records(self) -> Path:
        return self.path.with_name(f"{self.path.name}.holders")

    def holders(self) -> list[dict[str, Any]]:
        """Everyone who holds the lock now (their records), dropping those of dead processes."""
        found = []
        for record in sorted(self._records.glob("*.json")) if self._records.is_dir() else []:
            try:
                holder = json.loads(record.read_text())
            except (OSError, ValueError):
                continue  # being written or removed right now
            if workers.alive(workers.Worker.from_record(holder.get("worker"))) is False:
                record.unlink(missing_ok=True)
                continue
            found.append(holder)
        return found

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holders = self.holders()
                    who = "; ".join(describe(h) for h in holders) or "another process"
                    raise LockBusy(f"{self.path.parent} is in use by {who}", holders) from None
                time.sleep(0.05)
        self._fd = fd
        me = workers.this_worker()
        self._records.mkdir(exist_ok=True)
        self._record = self._records / f"{me.host}-{me.pid}-{me.token}.json"
        self._record.write_text(json.dumps({
            "worker": me.record(), "doing": self.doing, "shared": self.shared,
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }))
        return self

    def release(self) -> None:
        if self._record is not None:
            self._record.unlink(missing_ok=True)
            self._record = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
