"""Durations as a space or the command line writes them ("2h", "90m", "1h30m", seconds)."""

from __future__ import annotations

import re
from typing import Any

from search.errors import SpaceError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")


def parse(value: Any) -> float | None:
    """Seconds from "2h", "90m", "1h30m", "45s", or a number of seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*(\d+(?:\.\d+)?\s*[smhd]\s*)+", value.lower()):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value.lower()))
    else:
        raise SpaceError(f"Search(time_budget={value!r}) must be a duration like '2h', '90m', '1h30m' or a number "
                         "of seconds.")
    if seconds <= 0:
        raise SpaceError(f"Search(time_budget={value!r}) must be longer than 0 seconds.")
    return seconds
