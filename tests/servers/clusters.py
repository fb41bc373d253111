"""Throwaway servers for the tests and benchmarks of many workers: PostgreSQL and MLflow.

Plain Python (no pytest), so that bench/workers.py starts the same servers as the tests.
Both listen on 127.0.0.1 only, on a free port, keep everything in a temporary folder, and
are stopped (and the folder removed) by `stop()`; `atexit` stops them too when a caller
forgets, and a small guard process when the caller is killed outright (a test run stopped
with SIGTERM or SIGKILL runs no atexit): no server outlives the process that started it.

PostgreSQL's `initdb` refuses to run as root (CI runs as root), so when this process is root
the cluster belongs to the `postgres` user: its folder is created for that user and the
server's commands run through `runuser -u postgres --`.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

# Durability is worthless in a cluster deleted at the end of the run; without it a commit
# costs no fsync, so the tests measure the workers' coordination, not the disk.
FAST = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
        "-c shared_buffers=32MB")


class Unavailable(Exception):
    """A server cannot be had here; the message says why (the tests skip with it)."""


# The guard: waits for its parent (the process that started a server) to end, then stops
# the server (signals its process group, or runs its stop command) and removes its folder.
# Signals are sent from Python: procps' `kill -TERM -PGID` reads "-PGID" as "-1", every process.
_GUARD = """
import os, shutil, signal, subprocess, sys, time
parent, folder, group, command = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
while os.getppid() == parent:
    time.sleep(1)
if group > 1:
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        pass
if command:
    subprocess.run(command, capture_output=True, timeout=60)
shutil.rmtree(folder, ignore_errors=True)
"""


def _guard(folder: Path, *, group: int = 0, stop: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """`stop()`'s last resort, for a caller killed outright: see _GUARD."""
    return subprocess.Popen([sys.executable, "-c", _GUARD, str(os.getpid()), str(folder), str(group), *stop],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _unguard(guard: subprocess.Popen[bytes] | None) -> None:
    if guard is not None and guard.poll() is None:
        guard.kill()
        guard.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (15 preferred), or Unavailable."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: (Path(p).parent.name != "15", p))
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise Unavailable("no PostgreSQL server programs (initdb, pg_ctl): apt-get install postgresql "
                      "(`make test` tries it when it runs as root)")


def running(server: Postgres | MlflowServer, what: str) -> Iterator[Any]:
    """For a fixture: `server` started, then stopped after the tests that use it; they skip,
    naming `what`, when it cannot start here."""
    import pytest

    try:
        started = server.start()
    except Unavailable as e:
        pytest.skip(f"{what}: {e}")
    yield started
    started.stop()


class Postgres:
    """A PostgreSQL cluster in a temporary folder: `start()`, `database(name)` -> URL, `stop()`."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = 0
        self._as: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="search-pg-"))
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root, and there is no `postgres` user for initdb to run as") from None
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self._started = False
        self._guard: subprocess.Popen[bytes] | None = None

    def _run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise Unavailable(f"{Path(command[0]).name} failed: {(done.stderr or done.stdout).strip()[-500:]}")
        return done

    def start(self) -> Postgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        atexit.register(self.stop)
        self._guard = _guard(self.root, stop=[*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                                              "immediate", "-w", "stop"])
        for attempt in range(3):  # a free port can be taken between choosing it and binding it
            self.port = free_port()
            try:
                self.up()
                return self
            except Unavailable:
                if attempt == 2:
                    log = (self.root / "server.log")
                    raise Unavailable(f"PostgreSQL did not start: {log.read_text()[-500:] if log.exists() else ''}")
        raise AssertionError("unreachable")

    def up(self) -> None:
        """Start the server on its port (again, after `down`)."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} {FAST}"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "-o", options, "start")
        self._started = True

    def down(self) -> None:
        """Stop the server as an administrator's restart does (`-m fast`: every connection is cut)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self._started = False

    def url(self, database: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def stop(self) -> None:
        _unguard(self._guard)
        self._guard = None
        if self._started:
            self._started = False
            subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on 127.0.0.1, its artifacts served over HTTP from a temporary folder:
    workers upload and download their trials' files through it, as on separate machines."""

    def __init__(self, backend_store_uri: str | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="search-mlflow-"))
        self.backend = backend_store_uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.artifacts = self.root / "artifacts"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._guard: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> MlflowServer:
        self.port = free_port()
        atexit.register(self.stop)
        self.up(timeout)
        return self

    def up(self, timeout: float = 120) -> None:
        """Start the server on its port (again, after `down`), with the store and artifacts it had."""
        log = open(self.root / "server.log", "ab")
        # Its own process group: the server's worker processes are stopped with it. Without the
        # runners of MLflow's jobs (three more processes), which the tool never uses: they took
        # two thirds of the CPU a start of the server cost.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self._guard = _guard(self.root, group=self._process.pid)  # its whole process group
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise Unavailable(f"mlflow server exited: {(self.root / 'server.log').read_text()[-800:]}")
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise Unavailable(f"mlflow server did not answer within {timeout:.0f} s")

    def down(self) -> None:
        """Stop the server (its whole process group) and keep its store and artifacts for `up`."""
        _unguard(self._guard)
        self._guard = None
        if self._process is not None and self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self._process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._process.wait(timeout=20)
        self._process = None

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.down()
        shutil.rmtree(self.root, ignore_errors=True)
