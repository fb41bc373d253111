"""The oracle that hands out a search's trials: Keras Tuner's for its algorithms, ours for Optuna's."""

from __future__ import annotations

import inspect
from typing import Any

import keras_tuner as kt

from search import compat, metrics
from search.core.options import check_keys
from search.declare import Search
from search.core.algorithms import ALGORITHMS

MAX_CONSECUTIVE_FAILURES = 3
_CLASSES = {
    "random": kt.oracles.RandomSearchOracle,
    "grid": kt.oracles.GridSearchOracle,
    "bayesian": kt.oracles.BayesianOptimizationOracle,
    "hyperband": kt.oracles.HyperbandOracle,
}
# What make_oracle passes itself: not the space's to set.
_SET_HERE = ("objective", "max_trials", "max_epochs", "seed", "max_retries_per_trial", "max_consecutive_failed_trials")


def objective(search: Search) -> kt.Objective:
    return kt.Objective(search.objective, metrics.direction(search.objective))


def keras_tuner_seed(seed: int) -> int:
    """`seed` as Keras Tuner can take it. Its oracles run `self.seed = seed or
    random.randint(1, 10000)`, so seed 0, our default, would try a different sequence of
    values in every run. Seeds are 0 to MAX_SEED (Search checks), so seed + 1 is distinct
    and non-zero."""
    return seed + 1


def check_options(search: Search) -> None:
    """A one-line SearchError for a key of `search.options` that its oracle does not take
    (with the close match), before anything is written or built."""
    oracle = _CLASSES[search.algorithm]
    known = [n for n in inspect.signature(oracle).parameters if n not in _SET_HERE and n not in ("args", "kwargs")]
    check_keys(search.options, known, f"the {search.algorithm} algorithm (Keras Tuner's {oracle.__name__})")


def common(search: Search) -> dict[str, Any]:
    """What every oracle of a search is given: its objective, and failures never retried."""
    compat.patch_keras_tuner()  # its oracles go through the patched HyperParameters
    return {
        "objective": objective(search),
        "max_retries_per_trial": 0,
        "max_consecutive_failed_trials": MAX_CONSECUTIVE_FAILURES,
    }


def make_oracle(search: Search, seed: int) -> kt.Oracle:
    """Keras Tuner's oracle for `search.algorithm`."""
    settings = common(search)
    settings["seed"] = keras_tuner_seed(seed)
    check_options(search)
    options = dict(search.options)
    if search.algorithm == "hyperband":
        options.setdefault("factor", 3)
        return kt.oracles.HyperbandOracle(max_epochs=search.epochs, **settings, **options)
    assert search.algorithm in ALGORITHMS and search.algorithm in _CLASSES  # Search checked it; the factory chose
    return _CLASSES[search.algorithm](max_trials=search.max_trials, **settings, **options)
