"""Optuna's samplers and pruners as a search names them, and a Keras Tuner space in Optuna's terms."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import keras_tuner as kt
import optuna

from search.core.algorithms import ALGORITHMS
from search.core.options import OptunaOptions, check_keys, optuna_options
from search.declare import Search
from search.errors import SearchError

# Every Optuna algorithm's sampler, by the algorithm's name (search.core.algorithms declares them).
SAMPLERS = {name: a for name, a in ALGORITHMS.items() if a.sampler is not None}
_PRUNER_CLASSES = {"median": "MedianPruner", "hyperband": "HyperbandPruner",
                   "successive_halving": "SuccessiveHalvingPruner", "none": "NopPruner"}


def _keywords(cls: type, *set_here: str) -> list[str]:
    return [n for n, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in set_here]


def typed_options(search: Search) -> OptunaOptions:
    """`search.options` typed and checked: a key neither a setting nor the sampler's, or the
    pruner's, is a one-line error naming it and the close match."""
    if search.algorithm not in SAMPLERS:
        raise SearchError(f"algorithm {search.algorithm!r} is not an Optuna algorithm; use {', '.join(SAMPLERS)}.")
    sampler = getattr(optuna.samplers, str(SAMPLERS[search.algorithm].sampler))
    typed = optuna_options(search.options, _keywords(sampler, "seed"),
                           f"the {search.algorithm} algorithm (Optuna's {sampler.__name__})")
    pruner = getattr(optuna.pruners, _PRUNER_CLASSES[typed.pruner])
    check_keys(typed.pruner_options, _keywords(pruner, "max_resource" if typed.pruner == "hyperband" else ""),
               f"the {typed.pruner} pruner (Optuna's {pruner.__name__})",
               where="Search(options={{'pruner_options': {{{key!r}: ...}}}})")
    return typed


def make_sampler(algorithm: str, seed: int, max_trials: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The sampler of an Optuna algorithm: its defaults for `max_trials` trials, then `options`."""
    if algorithm not in SAMPLERS:
        raise SearchError(f"algorithm {algorithm!r} is not an Optuna algorithm; use {', '.join(SAMPLERS)}.")
    declared = SAMPLERS[algorithm]
    if declared.needs:
        try:
            importlib.import_module(declared.needs)
        except ImportError:
            raise SearchError(f"algorithm {algorithm!r} needs the `{declared.needs}` package (Optuna's "
                              f"{declared.sampler} runs on it): pip install {declared.needs}, or use tpe.") from None
    sampler = getattr(optuna.samplers, str(declared.sampler))
    return sampler(seed=seed, **{**declared.defaults(max_trials), **options})  # type: ignore[no-any-return]


def make_pruner(name: str, epochs: int, options: dict[str, Any]) -> optuna.pruners.BasePruner:
    if name == "median":
        # Steps are 1-based epochs: the first two epochs are never pruned.
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 3, "n_warmup_steps": 3, **options})
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": epochs, **options})
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": 1, **options})
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, space: kt.HyperParameters) -> dict[str, Any]:
    """Values for the active hyperparameters of a Keras Tuner space, suggested by `trial`."""
    hps = kt.HyperParameters()
    for hp in space.space:
        hps.merge([hp])
        if not hps.is_active(hp):  # conditional on a parent value not chosen
            continue
        hps.values[hp.name] = _suggest_one(trial, hp)
    return dict(hps.values)


def distribution(hp: Any) -> optuna.distributions.BaseDistribution | None:
    """A Keras Tuner hyperparameter's values as an Optuna distribution (None for a Fixed one)."""
    h = kt.engine.hyperparameters
    D = optuna.distributions
    if isinstance(hp, h.Fixed):
        return None
    if isinstance(hp, h.Boolean):
        return D.CategoricalDistribution([True, False])
    if isinstance(hp, h.Choice):
        return D.CategoricalDistribution(list(hp.values))
    log = hp.sampling in ("log", "reverse_log")
    if log and hp.step is not None:  # Keras Tuner's log step is a factor: a geometric grid
        grid, value = [], hp.min_value
        while value <= hp.max_value * (1 + 1e-9):
            grid.append(value)
            value *= hp.step
        return D.CategoricalDistribution(grid)
    if isinstance(hp, h.Int):
        return D.IntDistribution(hp.min_value, hp.max_value, step=hp.step or 1, log=log)
    if isinstance(hp, h.Float):
        return D.FloatDistribution(hp.min_value, hp.max_value, step=hp.step, log=log)
    raise SearchError(f"hyperparameter {hp.name!r}: {type(hp).__name__} cannot be translated to Optuna.")


def _suggest_one(trial: optuna.Trial, hp: Any) -> Any:
    found = distribution(hp)
    D = optuna.distributions
    if found is None:
        return hp.value
    if isinstance(found, D.CategoricalDistribution):
        return trial.suggest_categorical(hp.name, list(found.choices))
    if isinstance(found, D.IntDistribution):
        return trial.suggest_int(hp.name, found.low, found.high, step=found.step, log=found.log)
    assert isinstance(found, D.FloatDistribution)
    value = trial.suggest_float(hp.name, found.low, found.high, step=found.step, log=found.log)
    return round(value, 10) if found.step else value


def distributions(space: kt.HyperParameters, values: dict[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The distributions of the hyperparameters that `values` (a trial's) gives a value, as the
    study would have suggested them."""
    found: dict[str, optuna.distributions.BaseDistribution] = {}
    for hp in space.space:
        made = distribution(hp) if hp.name in values and hp.name not in found else None
        if made is not None and _holds(made, values[hp.name]):
            found[hp.name] = made
    return found


def _holds(made: optuna.distributions.BaseDistribution, value: Any) -> bool:
    if isinstance(made, optuna.distributions.CategoricalDistribution):
        return value in made.choices
    assert isinstance(made, (optuna.distributions.IntDistribution, optuna.distributions.FloatDistribution))
    return isinstance(value, (int, float)) and made.low <= value <= made.high
