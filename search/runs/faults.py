"""Crash injection for the tests that prove a killed search loses nothing and repeats nothing.

`SEARCH_FAULT` in the environment names where the process kills itself with SIGKILL, as a
power cut or the out-of-memory killer would; unset (always, outside those tests) every
check here is one dictionary lookup. Comma-separated rules, each `KIND:NAME[@N]`:

- ``write:GLOB@N``: the Nth file written whose name matches GLOB (``write:*@3``: the third
  file of any name), killed after its content is on disk and before it replaces the old
  file, the last instant a torn write could happen;
- ``point:NAME@N``: the Nth time the search passes the named point (`POINTS`).

N defaults to 1. Counts are per process.
"""

from __future__ import annotations

import fnmatch
import os
import signal
from pathlib import Path

ENV = "SEARCH_FAULT"

# The named moments of a trial's life, in order.
POINTS = (
    "search-run",  # the search's MLflow run is created or taken up again, its tags not logged yet
    "asked",  # Optuna: a study trial was asked for; its worker is not recorded on it yet
    "trial-begin",  # a trial was handed out, nothing trained yet
    "epoch-end",  # during fit: after each epoch's logs
    "model-saved",  # the trial's model.keras is written, its record is not
    "after-record",  # result.json says how the trial ended; the algorithm is not told yet
    "after-tell",  # the algorithm knows; trials.csv and tracking are not updated yet
    "promotion",  # the champion is chosen and about to be written
    "promotion-logging",  # the champion's MLflow run is open, its model not logged yet
    "reaped",  # a dead worker's trial is failed in the study; its retry is not queued yet
)


def _rules(text: str) -> list[tuple[str, str, int]]:
    rules = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, rest = item.partition(":")
        name, _, nth = rest.partition("@")
        if kind not in ("write", "point") or not name or (nth and not nth.isdigit()):
            raise ValueError(f"{ENV}={text!r}: each rule is write:GLOB[@N] or point:NAME[@N], got {item!r}")
        if kind == "point" and name not in POINTS:
            raise ValueError(f"{ENV}: unknown point {name!r}; the points are {', '.join(POINTS)}")
        rules.append((kind, name, int(nth or 1)))
    return rules


_RULES = _rules(os.environ.get(ENV, ""))
_SEEN: dict[tuple[str, str], int] = {}


def configure(text: str) -> None:
    """Take new rules (a process forked from one that read `SEARCH_FAULT` already)."""
    global _RULES
    _RULES = _rules(text)
    _SEEN.clear()


def _hit(kind: str, name: str) -> None:
    for rule_kind, pattern, nth in _RULES:
        if rule_kind != kind or not fnmatch.fnmatch(name, pattern):
            continue
        key = (kind, pattern)
        _SEEN[key] = _SEEN.get(key, 0) + 1
        if _SEEN[key] == nth:
            os.kill(os.getpid(), signal.SIGKILL)


def before_replace(path: Path) -> None:
    """Called by every atomic write, its new content flushed but not yet in place."""
    if _RULES:
        _hit("write", path.name)


def point(name: str) -> None:
    """Called as the search passes one of `POINTS`."""
    if _RULES:
        _hit("point", name)
