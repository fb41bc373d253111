"""One trial's training: build, compile, schedule, fit under the distribution strategy.

The search's trials and `search.ensemble --refit` both train through `train`, so a refit on
a TPU or several GPUs uses the same strategy, the same global batch (the per-replica batch
times the replicas) and the same learning-rate scaling as the search did.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from search import metrics
from search.data.dataset import ImageData
from search.engine.validation import EpochLine, ValidationPass
from search.hparams import TrialConfig
from search.models import build
from search.models.schedules import learning_rate_schedule

# Keras says this at the end of every pass over a dataset of unknown length (ours: a batch
# with an image that no longer decodes is dropped): it is not a problem with the data.
warnings.filterwarnings("ignore", message="Your input ran out of data")

# (config, number of classes) -> an uncompiled model taking raw 0..255 pixels.
ModelBuilder = Callable[[TrialConfig, int], keras.Model]


class TrialError(Exception):
    """A trial that cannot go on (NaN loss, nothing trained): recorded as FAILED with this message."""


@dataclasses.dataclass
class Trained:
    model: keras.Model
    history: dict[str, list[float]]
    seconds: float  # in model.fit
    probabilities: np.ndarray | None  # val probabilities of the epoch the weights are from (None: not validated)
    best_epoch: int | None
    train_images: int  # images per epoch


def train(
    config: TrialConfig,
    data: ImageData,
    strategy: tf.distribute.Strategy,
    *,
    epochs: int,
    seed: int,
    shuffle_seed: int,
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    split: str = "train",
    objective: str | None = "val_accuracy",
    patience: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    start_from: Path | None = None,
    history: dict[str, list[float]] | None = None,
    build_model: ModelBuilder | None = None,
    verbose: int = 0,
) -> Trained:
    """Train `config` on `split` and return the model with the weights of its best epoch.

    With an `objective` each epoch is validated (`ValidationPass`), EarlyStopping watches it
    (`patience` epochs without improvement; None: never stops early) and restores the best
    epoch; without one (a refit on train+val) nothing is validated and the last epoch is
    kept. `history` is filled epoch by epoch, so a caller still has it when fit raises.
    `start_from` continues the weights of a saved model (Hyperband's later rounds).
    """
    replicas = int(strategy.num_replicas_in_sync)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = (build_model or build.build_model)(config, data.num_classes)
        build.compile_model(model, config, replicas=replicas)
    if start_from is not None:
        model.load_weights(start_from)

    global_batch = config.batch_size * replicas
    batches = data.dataset(
        split, config.image_size, global_batch, augmentation=config.augmentation,
        shuffle=True, seed=shuffle_seed, repeat=steps_per_epoch is not None,
    )
    history = {} if history is None else history
    validation = None
    chain: list[keras.callbacks.Callback] = []
    if objective is not None:
        # First, so every callback after it sees the validation metrics it adds to the logs.
        validation = ValidationPass(data.dataset("val", config.image_size, global_batch), data.labels("val"),
                                    monitor=objective, mode=metrics.direction(objective))
        chain.append(validation)
    chain += [
        keras.callbacks.LearningRateScheduler(learning_rate_schedule(config, epochs, replicas)),
        keras.callbacks.TerminateOnNaN(),
        _History(history),
    ]
    if objective is not None:
        # Always restore the best epoch: it is the one the trial is scored and saved by.
        chain.append(keras.callbacks.EarlyStopping(
            monitor=objective, mode=metrics.direction(objective), restore_best_weights=True,
            patience=patience or epochs + 1))
    chain += [*callbacks, EpochLine()]

    started = time.monotonic()
    fit = model.fit(batches, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                    callbacks=chain, verbose=verbose, shuffle=False)  # the dataset is shuffled already
    seconds = time.monotonic() - started
    losses = fit.history.get("loss", [])
    if any(not math.isfinite(v) for v in losses):
        raise TrialError(f"the loss became NaN at epoch {initial_epoch + len(losses)}; try a lower learning_rate")
    if not losses:
        raise TrialError(f"no epoch ran (epochs {initial_epoch} to {epochs})")
    images = steps_per_epoch * global_batch if steps_per_epoch else data.count(split)
    return Trained(
        model=model,
        history={k: [float(x) for x in v] for k, v in fit.history.items()},
        seconds=seconds,
        probabilities=validation.probabilities if validation else None,
        best_epoch=validation.best_epoch if validation else None,
        train_images=images,
    )


def best_metrics(history: dict[str, list[float]], objective: str) -> dict[str, float]:
    """The metrics of the epoch the objective likes best (the one EarlyStopping restored)."""
    scores = history.get(objective, [])
    if not scores:
        return {k: v[-1] for k, v in history.items() if v}
    pick = np.argmin if metrics.direction(objective) == "min" else np.argmax
    epoch = int(pick(scores))
    return {k: float(v[epoch]) for k, v in history.items() if len(v) > epoch}


class _History(keras.callbacks.Callback):
    def __init__(self, history: dict[str, list[float]]):
        super().__init__()
        self.history = history

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float, np.number)):
                self.history.setdefault(key, []).append(float(value))
