"""Who is doing the work, and whether it is still alive.

Locks, running trials and tracking runs carry the `Worker` that holds them. Another process
may declare one dead only when it can tell for certain: the worker runs where its process
ids mean the same thing (the same boot and process-id namespace: containers that share a
host name do not), and that process id is gone or now belongs to a process started at
another time (a reused id). Anything else is "cannot tell", and the callers then wait for a
heartbeat to go stale instead: a live worker is never taken for dead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import socket
import time
from typing import Any


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _namespace() -> str:
    """Equal for two processes exactly when each can look the other's process id up."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pids = os.readlink("/proc/self/ns/pid")
    except OSError:
        pids = ""
    if boot and pids:
        return f"{boot}/{pids}"
    return f"{socket.gethostname()}/no-proc"  # not Linux: the host name is all there is


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" when unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else ""


@dataclasses.dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    started: str
    namespace: str
    token: str  # tells two lives of the same process id apart when `started` is unknown

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Any) -> Worker | None:
        """A worker from `record()`'s dict; None for anything else (older or foreign records)."""
        if not isinstance(record, dict):
            return None
        try:
            return cls(str(record["host"]), int(record["pid"]), str(record.get("started", "")),
                       str(record["namespace"]), str(record.get("token", "")))
        except (KeyError, TypeError, ValueError):
            return None


@functools.lru_cache(maxsize=1)
def _this(pid: int) -> Worker:
    return Worker(socket.gethostname(), pid, _started(pid), _namespace(), secrets.token_hex(4))


def this_worker() -> Worker:
    """This process (a forked child gets its own)."""
    return _this(os.getpid())


def alive(worker: Worker | None) -> bool | None:
    """True or False when this process can tell for certain, None when it cannot."""
    if worker is None or worker.namespace != this_worker().namespace:
        return None
    if worker.pid == os.getpid():
        return worker.token == this_worker().token
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists and belongs to someone else
    started = _started(worker.pid)
    if worker.started and started:
        return started == worker.started
    return True


def beat_is_stale(beat: float | None, grace_period: float) -> bool:
    """Whether a heartbeat written at `beat` (epoch seconds) is older than `grace_period`."""
    return beat is not None and time.time() - beat > grace_period
