"""Heartbeats of a worker's running trials, from a process of their own.

A worker of a shared Optuna study proves it is alive by beating: Optuna's own heartbeat
table for an RDB storage (PostgreSQL, MySQL), a `heartbeat` user attribute for the journal
file, which Optuna's heartbeat does not cover (optuna#6615). A thread of the training
process cannot be trusted to beat: TensorFlow holds the interpreter lock for long stretches
while it traces and optimises a large model's first epoch (minutes for a DenseNet201 on two
cores), and a worker that stops beating for the grace period is taken for dead and its trial
run again. So the beats come from a small child process, which beats for the trials its
parent names on its stdin and exits the moment that pipe closes: when the worker ends, or is
killed, the beats stop.

    python -m search.liveness.heartbeat    (started by `Heartbeat`; the storage comes in the
                                          environment, never on the command line: it may
                                          hold a password)
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable

STORAGE_ENV = "SEARCH_HEARTBEAT_STORAGE"
INTERVAL_ENV = "SEARCH_HEARTBEAT_INTERVAL"
# Seconds between tries while the storage does not answer: doubled each time, up to the max.
RETRY_FIRST, RETRY_MAX = 0.5, 4.0


class Heartbeat:
    """The parent's side: `beat(trial ids)` names the trials to keep alive, `stop()` ends it."""

    def __init__(self, storage: str, interval: float):
        self.storage, self.interval = storage, interval
        self._process: subprocess.Popen[str] | None = None

    def beat(self, trial_ids: list[int]) -> None:
        if self._process is None or self._process.poll() is not None:
            env = {**os.environ, STORAGE_ENV: self.storage, INTERVAL_ENV: str(self.interval)}
            self._process = subprocess.Popen(
                [sys.executable, "-m", "search.liveness.heartbeat"], stdin=subprocess.PIPE, text=True, env=env,
                stdout=subprocess.DEVNULL, stderr=None,
            )
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(sorted(trial_ids)) + "\n")
            stdin.flush()
        except (BrokenPipeError, OSError):
            self._process = None  # it died; the next beat starts another

    def stop(self) -> None:
        if self._process is None:
            return
        try:
            assert self._process.stdin is not None
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._process = None


def _open(storage: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(beat one trial, close): connects at once, so a storage that is down raises here."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if "://" in storage:
        rdb = optuna.storages.RDBStorage(storage, skip_compatibility_check=True, skip_table_creation=True,
                                         engine_kwargs={"pool_pre_ping": True})
        return rdb.record_heartbeat, rdb.engine.dispose
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(storage))
    return (lambda trial_id: journal.set_trial_user_attr(trial_id, "heartbeat", time.time())), lambda: None


class _Storage:
    """The storage as the beats reach it: opened when it first answers, opened again after any
    error. A storage that is down (a database restarting, at this process's start or later)
    costs one line on stderr and a retry a moment later, never this process: a worker whose
    heartbeat process died would be taken for dead by the others and its trial run twice."""

    def __init__(self, url: str):
        self.url = url
        self._opened: tuple[Callable[[int], None], Callable[[], None]] | None = None
        self.down: str | None = None  # why the last beat failed

    def beat(self, trial_ids: list[int]) -> bool:
        """Beat every trial; False when the storage could not be reached (try again soon)."""
        try:
            if self._opened is None:
                self._opened = _open(self.url)
            record = self._opened[0]
            for trial_id in trial_ids:
                try:
                    record(trial_id)
                except Exception as e:  # noqa: BLE001 - sorted below
                    if "finished" not in str(e).lower():
                        raise
        except Exception as e:  # noqa: BLE001 - whatever the storage says: beat again soon
            self._close()
            if self.down is None:
                from search.redaction import redact

                root: BaseException = e
                while root.__cause__ is not None:  # Optuna wraps the driver's error in a vaguer one
                    root = root.__cause__
                first = (str(root).strip().splitlines() or [""])[0][:200]
                print(f"warning: heartbeat: the study's storage does not answer ({type(root).__name__}: "
                      f"{redact(first)}); beating again as soon as it does.", file=sys.stderr, flush=True)
            self.down = type(e).__name__
            return False
        if self.down is not None:
            print("heartbeat: the study's storage answers again; beating.", file=sys.stderr, flush=True)
            self.down = None
        return True

    def _close(self) -> None:
        if self._opened is not None:
            try:
                self._opened[1]()
            except Exception:  # noqa: BLE001 - a connection already gone
                pass
            self._opened = None


class _Lines:
    """The parent's lines, read from the pipe's file descriptor itself. Python's buffered
    `readline` would read two lines written in quick succession (a trial's end, then the
    next trial) into its buffer and hand back only the first, and `select` on the pipe
    would then not see the second: the new trial would go unbeaten until the parent wrote
    again, at its end."""

    def __init__(self, fd: int):
        self.fd, self._partial = fd, b""

    def within(self, timeout: float) -> list[str] | None:
        """Complete lines available within `timeout` seconds; None once the parent has closed the pipe."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        chunk = os.read(self.fd, 65536)
        if not chunk:
            return None
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        return [line.decode() for line in lines if line.strip()]


def main() -> int:
    storage, interval = _Storage(os.environ[STORAGE_ENV]), float(os.environ.get(INTERVAL_ENV, "30"))
    parent = os.getppid()
    trials: list[int] = []
    due = 0.0  # when the next beat is due (monotonic seconds)
    retry = RETRY_FIRST
    stdin = _Lines(sys.stdin.fileno())
    while True:
        lines = stdin.within(max(0.0, min(1.0, due - time.monotonic())))
        if lines is None or os.getppid() != parent:
            return 0
        for line in lines:
            trials = [int(t) for t in json.loads(line)]
            due = 0.0  # a new trial beats at once
        if time.monotonic() < due:
            continue
        if not trials or storage.beat(trials):
            due, retry = time.monotonic() + interval, RETRY_FIRST
        else:  # the storage is back within seconds of a restart: the beat follows it closely
            due, retry = time.monotonic() + min(retry, interval), min(2 * retry, RETRY_MAX)


if __name__ == "__main__":
    sys.exit(main())
