"""User-facing errors: each message names the thing, what was wrong, and the fix.

The CLI prints them as one line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SearchError(Exception):
    """A mistake the user can fix (bad space file, missing data, bad option)."""


class SpaceError(SearchError):
    """The space file is broken."""


class DataError(SearchError):
    """The dataset is missing, empty, or inconsistent."""


class ModelError(SearchError):
    """A backbone or a weights file cannot be used."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest choice, or "" if none is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean '{lowered[close[0]]}'?" if close else ""
