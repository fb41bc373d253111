"""Fixtures of the crash tests: a zygote that forks a fresh process per command (see zygote.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from conftest import REPO


@dataclasses.dataclass
class Ended:
    code: int  # negative: killed by that signal
    output: str


class Zygote:
    def __init__(self, folder: Path):
        self.folder = folder
        self._ids = itertools.count()
        self._pending: dict[str, Future] = {}
        self._logs: dict[str, Path] = {}
        self._pids: dict[str, int] = {}
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
                if "pid" in event:
                    self._pids[event["id"]] = event["pid"]
                elif "code" in event:
                    future = self._pending.pop(event["id"])
                    future.set_result(Ended(event["code"], self._logs[event["id"]].read_text(errors="replace")))

    def start(self, module: str, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> Future:
        """Fork `python -m search.<module> ARGS`; the future gives how it ended."""
        job = str(next(self._ids))
        log = self.folder / f"job-{job}.log"
        future: Future = Future()
        future.id = job  # type: ignore[attr-defined]
        with self._lock:
            self._pending[job] = future
            self._logs[job] = log
        environment = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": "", **(env or {})}
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": job, "module": module, "args": list(args), "env": environment,
                                             "cwd": str(cwd), "log": str(log)}) + "\n")
        self.process.stdin.flush()
        return future

    def run(self, module: str, *args: str, timeout: float = 300, **kwargs: object) -> Ended:
        return self.start(module, *args, **kwargs).result(timeout=timeout)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.kill()
        self.process.wait()


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory):
    forks = Zygote(tmp_path_factory.mktemp("zygote"))
    yield forks
    forks.close()
