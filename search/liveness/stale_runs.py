"""Tracking runs left RUNNING by a process that died: the tags that tell, and the verdict.

A run of a search, a trial or a promotion is tagged with its worker (`workers.Worker`) and a
`heartbeat` (epoch seconds) refreshed while it lives. Another process marks such a run
KILLED (search.tracking.tracker) once it can tell the worker is gone: at once where process
ids can be compared, else once the heartbeat is older than the store's `stale_after`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from search.liveness import workers


def tags(worker: workers.Worker) -> dict[str, str]:
    """The tags that tell other processes whether a run of `worker` is still alive."""
    return {"worker": json.dumps(worker.record()), "heartbeat": f"{time.time():.0f}"}


def is_stale(run_tags: Mapping[str, str], start_time_ms: int, *, me: workers.Worker, open_here: bool,
             stale_after: float, now: float | None = None) -> bool:
    """Whether a RUNNING run with `run_tags` will never end: its worker is dead, or (where that
    cannot be told) its heartbeat is older than `stale_after` seconds. `open_here`: a tracker
    of this process holds it open. Runs that name no worker (older versions) are never stale."""
    if "worker" not in run_tags or open_here:
        return False
    try:
        owner = workers.Worker.from_record(json.loads(run_tags.get("worker", "null")))
    except ValueError:
        owner = None
    life = workers.alive(owner)
    if life is True and owner == me:
        life = False  # an earlier search in this process, whose tracker is gone
    beat = float(run_tags.get("heartbeat") or start_time_ms / 1000)
    return life is False or (life is None and (now or time.time()) - beat > stale_after)
