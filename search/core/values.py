"""The one coercion of a value a user wrote (a space file, `--set`) to the type a setting takes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def lossless(value: Any, kinds: Iterable[type]) -> Any:
    """`value` as one of `kinds` when that loses nothing (64.0 -> 64 where only int is taken,
    3 -> 3.0 for a float); otherwise unchanged, for the caller's check to refuse. A bool is
    never taken for a number."""
    kinds = tuple(kinds)
    if isinstance(value, bool):
        return value
    if int in kinds and float not in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    if float in kinds and isinstance(value, int):
        return float(value)
    return value
