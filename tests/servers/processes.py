"""Worker processes for the tests: started together, as a user starts them on several
machines (or terminals), and waited for with their output kept."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from conftest import REPO


@dataclasses.dataclass
class Ended:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Worker:
    """`python -m search.<module> ARGS` in a process of its own, its output in temporary files
    (a pipe nobody reads could fill up and stall it)."""

    def __init__(self, module: str, args: Sequence[str], env: dict[str, str] | None = None, cwd: Path = REPO):
        self.args = [str(a) for a in args]
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"search.{module}", *self.args], cwd=cwd, stdout=self._out, stderr=self._err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1",
                 **(env or {})})

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 600) -> Ended:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return Ended(self.args, code, self._read(self._out), self._read(self._err))

    @staticmethod
    def _read(file) -> str:  # noqa: ANN001 - a TemporaryFile
        file.seek(0)
        text = file.read().decode("utf-8", "replace")
        file.close()
        return text


def run_together(commands: Sequence[tuple[Sequence[str], dict[str, str] | None]], module: str = "run",
                 timeout: float = 600, cwd: Path = REPO) -> list[Ended]:
    """Start every command at once (no process waits for another to start), wait for all."""
    started = [Worker(module, args, env, cwd=cwd) for args, env in commands]
    # Each one reaped the moment it ends: a dead worker left a zombie looks alive to the
    # others (its process id still answers), and they would wait for its trial for ever.
    deadline = time.monotonic() + timeout
    while [w for w in started if w.process.poll() is None] and time.monotonic() < deadline:  # polls every one
        time.sleep(0.1)
    return [w.wait(max(1.0, deadline - time.monotonic())) for w in started]
