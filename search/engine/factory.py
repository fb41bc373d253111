"""The one place that looks at which library runs a search's algorithm: the source it gets,
whether its workers share a runs folder, and the study its trials live in."""

from __future__ import annotations

from search.declare import Search
from search.core.algorithms import uses_optuna
from search.engine import oracles
from search.engine.kt_source import KerasTunerSource
from search.engine.source import TrialSource


def shares_folder(search: Search) -> bool:
    """Whether many processes run one search in one runs folder (the workers of an Optuna study)."""
    return uses_optuna(search.algorithm)


def study_name(search: Search, space_name: str) -> str | None:
    """The Optuna study a search's trials live in; None for a search of this process alone."""
    if not shares_folder(search):
        return None
    return str(search.options.get("study") or space_name)


def make_source(search: Search, seed: int) -> TrialSource:
    """The source for `search.algorithm`: Keras Tuner's oracle, or an Optuna study."""
    if uses_optuna(search.algorithm):
        from search.engine.optuna_source import OptunaSource  # Optuna loads only for its algorithms

        return OptunaSource(search, seed)
    return KerasTunerSource(search, seed)


def check_options(search: Search) -> None:
    """A one-line SearchError for a key of `search.options` that the algorithm does not take
    (with the close match), before anything is written or built."""
    if uses_optuna(search.algorithm):
        from search.engine.samplers import typed_options

        typed_options(search)
    else:
        oracles.check_options(search)
