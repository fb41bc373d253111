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

    python -m search.engine.heartbeat    (started by `Heartbeat`; the storage comes in the
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

STORAGE_ENV = "SEARCH_HEARTBEAT_STORAGE"
INTERVAL_ENV = "SEARCH_HEARTBEAT_INTERVAL"


class Heartbeat:
    """The parent's side: `beat(trial ids)` names the trials to keep alive, `stop()` ends it."""

    def __init__(self, storage: str, interval: float):
        self.storage, self.interval = storage, interval
        self._process: subprocess.Popen[str] | None = None

    def beat(self, trial_ids: list[int]) -> None:
        if self._process is None or self._process.poll() is not None:
            env = {**os.environ, STORAGE_ENV: self.storage, INTERVAL_ENV: str(self.interval)}
            self._process = subprocess.Popen(
                [sys.executable, "-m", "search.engine.heartbeat"], stdin=subprocess.PIPE, text=True, env=env,
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


def _open(storage: str):  # type: ignore[no-untyped-def]
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if "://" in storage:
        rdb = optuna.storages.RDBStorage(storage, skip_compatibility_check=True, skip_table_creation=True)
        return lambda trial_id: rdb.record_heartbeat(trial_id)
    from optuna.storages.journal import JournalFileBackend

    journal = optuna.storages.JournalStorage(JournalFileBackend(storage))
    return lambda trial_id: journal.set_trial_user_attr(trial_id, "heartbeat", time.time())


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
    storage, interval = os.environ[STORAGE_ENV], float(os.environ.get(INTERVAL_ENV, "30"))
    record = _open(storage)
    parent = os.getppid()
    trials: list[int] = []
    last = 0.0
    stdin = _Lines(sys.stdin.fileno())
    while True:
        lines = stdin.within(max(0.0, min(1.0, last + interval - time.monotonic())))
        if lines is None or os.getppid() != parent:
            return 0
        for line in lines:
            trials = [int(t) for t in json.loads(line)]
            last = 0.0  # a new trial beats at once
        if time.monotonic() - last >= interval:
            for trial_id in trials:
                try:
                    record(trial_id)
                except Exception as e:  # noqa: BLE001 - a finished trial or a storage hiccup: next beat
                    if "finished" not in str(e).lower():
                        print(f"warning: heartbeat of trial {trial_id}: {type(e).__name__}: {e}", file=sys.stderr)
            last = time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
