"""`search.ensemble --refit`: the chosen members retrained on train+val, as the report's Level 1 did.

Each member is retrained from scratch with its trial's configuration through the same trial
function as the search (`search.engine.trial.train`): under the detected strategy (TPU,
several GPUs), with the global batch and the replica-scaled learning rate, on train and val
shuffled together, for as many epochs as its trial needed to reach its best epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf

from search import metrics
from search.data.dataset import TRAIN_VAL, ImageData
from search.engine import trial as training
from search.engine.memory import TrialMemory
from search.engine.tuner import user_builder
from search.hparams import TrialConfig
from search.models import build
from search.space import Space


def refit_epochs(record: dict[str, Any], objective: str) -> int:
    """Epochs to retrain a trial for: up to its best epoch (the weights it kept), else all it ran."""
    scores = record.get("history", {}).get(objective) or []
    finite = [(s, i) for i, s in enumerate(scores) if s is not None]
    if not finite:
        return max(1, int(record.get("epochs_run") or 1))
    if metrics.direction(objective) == "min":
        return min(finite)[1] + 1
    return max(finite, key=lambda item: (item[0], -item[1]))[1] + 1


def refit_member(record: dict[str, Any], data: ImageData, strategy: tf.distribute.Strategy, path: Path, *,
                 epochs: int, steps_per_epoch: int | None, seed: int, space: Space | None = None,
                 verbose: int = 0) -> Path:
    """Retrain a trial's configuration from scratch on train+val and save it to `path`
    (`space`: the space file, for a model of its own build_model)."""
    memory = TrialMemory()
    builder = None
    if space is not None and space.build_fn is not None:
        builder = user_builder(space, space.hyperparameters_with(record.get("values") or {}))
    trained = training.train(
        TrialConfig.from_values(record["config"]), data, strategy, epochs=epochs, seed=seed, shuffle_seed=seed,
        steps_per_epoch=steps_per_epoch, split=TRAIN_VAL, objective=None, build_model=builder, verbose=verbose,
    )
    build.save_for_serving(trained.model, path)
    del trained
    memory.release()
    return path
