"""`Search(options=...)` typed: the settings of an Optuna search apart from its sampler's arguments.

A Keras Tuner algorithm's options are its oracle's keyword arguments (hyperband's `factor`);
an Optuna algorithm's are the settings below plus its sampler's keyword arguments
(`n_startup_trials`). Every key is checked against what the algorithm takes: an unknown one
is a one-line error naming it and the close match, before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from search.errors import SpaceError, did_you_mean

# Optuna's pruners by the name a space gives them, and what each does.
PRUNERS = {
    "median": "stop a trial whose objective is below the median of earlier trials at the same epoch (default)",
    "hyperband": "Hyperband's brackets of successive halving, from 1 epoch up to the search's epochs",
    "successive_halving": "successive halving: keep the best fraction of trials at each epoch rung",
    "none": "never stop a trial early",
}
DEFAULT_PRUNER = "median"


@dataclasses.dataclass(frozen=True)
class OptunaOptions:
    """The framework's settings of an Optuna search; `sampler` holds the sampler's own arguments."""

    storage: str | None = None  # an RDB URL or a journal file path; None: the runs folder's journal
    study: str | None = None  # the study's name; None: the space's name
    heartbeat_interval: float = 30.0  # seconds between a worker's heartbeats
    grace_period: float | None = None  # seconds without a heartbeat before a worker is taken for dead
    pruner: str = DEFAULT_PRUNER
    pruner_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    sampler: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def grace(self) -> float:
        return float(self.grace_period if self.grace_period is not None else 4 * self.heartbeat_interval)


SETTINGS = tuple(f.name for f in dataclasses.fields(OptunaOptions) if f.name != "sampler")


def check_pruner(name: Any) -> str:
    if name not in PRUNERS:
        raise SpaceError(f"Search(options={{'pruner': {name!r}}}) is not a pruner.{did_you_mean(str(name), PRUNERS)} "
                         f"Use one of {', '.join(PRUNERS)}.")
    return str(name)


def optuna_options(options: Mapping[str, Any], sampler_arguments: Iterable[str] | None = None,
                   algorithm: str = "the sampler") -> OptunaOptions:
    """`options` typed. With `sampler_arguments` (the sampler's keyword arguments), a key that is
    neither a setting nor one of them is a SpaceError naming it and the close match."""
    settings = {k: v for k, v in options.items() if k in SETTINGS}
    sampler = {k: v for k, v in options.items() if k not in SETTINGS}
    if sampler_arguments is not None:
        check_keys(sampler, [*SETTINGS, *sampler_arguments], algorithm)
    check_pruner(settings.get("pruner", DEFAULT_PRUNER))
    for name in ("heartbeat_interval", "grace_period"):
        value = settings.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise SpaceError(f"Search(options={{{name!r}: {value!r}}}) must be a number of seconds > 0.")
    if not isinstance(settings.get("pruner_options", {}), Mapping):
        raise SpaceError("Search(options={'pruner_options': ...}) must be a dict of the pruner's keyword arguments.")
    for name in ("storage", "study"):
        if settings.get(name) is not None and not isinstance(settings[name], str):
            raise SpaceError(f"Search(options={{{name!r}: {settings[name]!r}}}) must be a string.")
    return OptunaOptions(**{**settings, "pruner_options": dict(settings.get("pruner_options") or {})}, sampler=sampler)


def check_keys(given: Mapping[str, Any], known: Iterable[str], owner: str,
               where: str = "Search(options={{{key!r}: ...}})") -> None:
    """SpaceError for the first key of `given` that `owner` does not take, with the close match;
    `where` says where the key was given ({key} in it is replaced by the key)."""
    known = list(known)
    for key in given:
        if key not in known:
            raise SpaceError(
                f"{where.format(key=key)}: {owner} takes no option {key!r}.{did_you_mean(str(key), known)} "
                f"Its options: {', '.join(known) or 'none'}.")
