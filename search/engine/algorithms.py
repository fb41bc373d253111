"""The search algorithms a space may use, and which library runs each.

Plain data, so a space file's `algorithm` is checked without importing either library.
`search.engine.oracles` turns a Keras Tuner name into its oracle, `search.engine.optuna_oracle`
an Optuna name into its sampler.
"""

from __future__ import annotations

import dataclasses

KERAS_TUNER = "keras-tuner"
OPTUNA = "optuna"


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    library: str
    description: str
    needs: str | None = None  # a package to install beyond the defaults


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("random", KERAS_TUNER, "random search: never repeats a combination"),
    Algorithm("grid", KERAS_TUNER, "every combination in turn"),
    Algorithm("bayesian", KERAS_TUNER, "Bayesian optimisation with a Gaussian process"),
    Algorithm("hyperband", KERAS_TUNER, "Hyperband: many short trials, the best ones continued"),
    Algorithm("tpe", OPTUNA, "Optuna's tree-structured Parzen estimator (multivariate, grouped)"),
    Algorithm("cmaes", OPTUNA, "Optuna's CMA-ES for numbers, random choices beside it", needs="cmaes"),
    Algorithm("gp", OPTUNA, "Optuna's Gaussian-process sampler", needs="torch"),
    Algorithm("nsga2", OPTUNA, "Optuna's NSGA-II, for multi-objective (Pareto) searches"),
)}

OPTUNA_ALGORITHMS = tuple(name for name, a in ALGORITHMS.items() if a.library == OPTUNA)


def uses_optuna(name: str) -> bool:
    return name in OPTUNA_ALGORITHMS
