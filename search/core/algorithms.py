"""The search algorithms a space may use, and which library runs each.

Plain data, so a space file's `algorithm` is checked without importing either library.
`search.engine.factory` picks the trial source for a name: Keras Tuner's oracle
(`search.engine.oracles`) or an Optuna study and its sampler (`search.engine.samplers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

KERAS_TUNER = "keras-tuner"
OPTUNA = "optuna"


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    library: str
    description: str
    needs: str | None = None  # a package to install beyond the defaults (its import name)
    # Optuna's: the `optuna.samplers` class, and its arguments' defaults for a search of N trials.
    sampler: str | None = None
    defaults: Callable[[int], dict[str, Any]] = lambda max_trials: {}


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("random", KERAS_TUNER, "random search: never repeats a combination"),
    Algorithm("grid", KERAS_TUNER, "every combination in turn"),
    Algorithm("bayesian", KERAS_TUNER, "Bayesian optimisation with a Gaussian process"),
    Algorithm("hyperband", KERAS_TUNER, "Hyperband: many short trials, the best ones continued"),
    Algorithm("tpe", OPTUNA, "Optuna's tree-structured Parzen estimator (multivariate, grouped)",
              sampler="TPESampler", defaults=lambda n: {"n_startup_trials": max(3, min(10, n // 3)),
                                                        "multivariate": True, "group": True}),
    # CMA-ES samples numbers; choices are sampled at random beside it (no warning each trial).
    Algorithm("cmaes", OPTUNA, "Optuna's CMA-ES for numbers, random choices beside it", needs="cmaes",
              sampler="CmaEsSampler", defaults=lambda n: {"warn_independent_sampling": False}),
    Algorithm("gp", OPTUNA, "Optuna's Gaussian-process sampler", needs="torch", sampler="GPSampler"),
    Algorithm("nsga2", OPTUNA, "Optuna's NSGA-II, for multi-objective (Pareto) searches",
              sampler="NSGAIISampler", defaults=lambda n: {"population_size": max(4, min(50, n // 3))}),
)}

OPTUNA_ALGORITHMS = tuple(name for name, a in ALGORITHMS.items() if a.library == OPTUNA)


def uses_optuna(name: str) -> bool:
    return name in OPTUNA_ALGORITHMS
