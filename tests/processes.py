"""Commands in processes of their own, as a user runs them in terminals or on machines.

Each is forked from the zygote (zygote.py), which has imported the tool once: a real process,
with its own pid, files, locks and exit status, that starts its first trial within a second
instead of after a TensorFlow import. `cli` in conftest.py runs a fresh interpreter instead,
for what only one can show (no traceback on a user's mistake, the launcher's own children).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # conftest.py takes it from here


@dataclasses.dataclass
class Ended:
    code: int  # negative: killed by that signal
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Job:
    """One forked command: `pid()` once it is forked, `result()` once it has ended."""

    def __init__(self, id: str):
        self.id = id
        self.forked = threading.Event()
        self.ended: Future[Ended] = Future()
        self._pid = 0

    def pid(self, timeout: float = 60) -> int:
        if not self.forked.wait(timeout):
            raise TimeoutError(f"job {self.id} was not forked within {timeout} s")
        return self._pid

    def kill(self, signum: int = signal.SIGKILL) -> None:
        try:
            os.kill(self.pid(), signum)
        except ProcessLookupError:
            pass  # it had ended already

    def result(self, timeout: float = 600) -> Ended:
        """How it ended; killed (SIGKILL) if it has not within `timeout` seconds."""
        try:
            return self.ended.result(timeout=timeout)
        except FutureTimeout:
            self.kill()
            return self.ended.result(timeout=30)


class Zygote:
    def __init__(self, folder: Path):
        self.folder = folder
        self._ids = itertools.count()
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("zygote.py"))], cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.process.stdout is not None
        first = json.loads(self.process.stdout.readline())
        assert first == {"ready": True}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            with self._lock:
                job = self._jobs[event["id"]]
            if "pid" in event:
                job._pid = event["pid"]
                job.forked.set()
            elif "code" in event:
                out, err = (self.folder / f"job-{job.id}.{name}" for name in ("stdout", "stderr"))
                job.ended.set_result(Ended(event["code"], out.read_text(errors="replace"),
                                           err.read_text(errors="replace")))

    def start(self, module: str, *args: str | Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> Job:
        """Fork `python -m search.<module> ARGS` in `cwd` with `env` added to this environment."""
        job = Job(str(next(self._ids)))
        with self._lock:
            self._jobs[job.id] = job
        environment = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": "", **(env or {})}
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({
            "id": job.id, "module": module, "args": [str(a) for a in args], "env": environment, "cwd": str(cwd),
            **{name: str(self.folder / f"job-{job.id}.{name}") for name in ("stdout", "stderr")}}) + "\n")
        self.process.stdin.flush()
        return job

    def run(self, module: str, *args: str | Path, timeout: float = 600, **kwargs) -> Ended:  # noqa: ANN003
        return self.start(module, *args, **kwargs).result(timeout=timeout)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.kill()
        self.process.wait()


def run_together(zygote: Zygote, commands: Sequence[tuple[Sequence[str | Path], dict[str, str] | None]],
                 module: str = "run", timeout: float = 600, cwd: Path = REPO) -> list[Ended]:
    """Start every command at once (no process waits for another to start), wait for all.
    The zygote reaps each one the moment it ends: a dead worker left a zombie would look
    alive to the others (its process id still answers), and they would wait for its trial."""
    jobs = [zygote.start(module, *args, env=env, cwd=cwd) for args, env in commands]
    deadline = time.monotonic() + timeout
    return [job.result(max(1.0, deadline - time.monotonic())) for job in jobs]
