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
from search.engine.callbacks import Interruptible
from search.engine.validation import EpochLine, ValidationPass
from search.hparams import TrialConfig
from search.models import build, features, head
from search.models.features import FeatureCache
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
    # A callback other than EarlyStopping stopped it (the time budget, a pruner): nothing follows.
    stopped: bool = False
    # The metrics the kept weights are scored by, when not `history`'s best epoch (folds' means).
    best: dict[str, float] | None = None


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
    val_split: str = "val",
    objective: str | None = "val_accuracy",
    patience: int | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    start_from: Path | None = None,
    history: dict[str, list[float]] | None = None,
    build_model: ModelBuilder | None = None,
    verbose: int = 0,
    feature_cache: FeatureCache | None = None,
    cached_views: int = 1,
    fine_tune_if: Callable[[Trained], bool] | None = None,
) -> Trained:
    """Train `config` on `split` and return the model with the weights of its best epoch.

    With an `objective` each epoch is validated (`ValidationPass`), EarlyStopping watches it
    (`patience` epochs without improvement; None: never stops early) and restores the best
    epoch; without one (a refit on train+val) nothing is validated and the last epoch is
    kept; `val_split` names the images validated on (a fold's held-out ones). `history` is filled epoch by epoch, so a caller still has it when fit raises.
    `start_from` continues the weights of a saved model (Hyperband's later rounds).

    A frozen backbone (`fine_tune` frozen, and the first `probe_epochs` of probe_then_all)
    trains its head on the pooled features `feature_cache` holds, when one is given; the
    model returned is the whole model either way. `history["stage"]` says which stage each
    epoch belongs to (PROBE or FINE_TUNE) for those two modes. `fine_tune_if`, given the
    probe's result, says whether probe_then_all goes on to its second stage.
    """
    replicas = int(strategy.num_replicas_in_sync)
    keras.utils.set_random_seed(seed)
    # A frozen head sweep on cached features shares one backbone build per process.
    share = feature_cache is not None and config.fine_tune == "frozen" and start_from is None
    with strategy.scope():
        model = build_model(config, data.num_classes) if build_model else \
            build.build_model(config, data.num_classes, share_frozen=share)
    if start_from is not None:
        model.load_weights(start_from)
    history = {} if history is None else history
    staged = build_model is None and config.fine_tune in ("frozen", "probe_then_all")
    probe_until = epochs if config.fine_tune == "frozen" else min(epochs, int(config.probe_epochs))
    if not staged or initial_epoch >= probe_until:  # one stage, through the whole model
        with strategy.scope():
            build.compile_model(model, config, replicas=replicas)
        return _fit(model, model, config, data, split, val_split, epochs=epochs, initial_epoch=initial_epoch, seed=shuffle_seed,
                    steps_per_epoch=steps_per_epoch, replicas=replicas, objective=objective, patience=patience,
                    callbacks=callbacks, history=history, verbose=verbose,
                    stage=FINE_TUNE if staged else None, rate_offset=probe_until if staged else 0)

    backbone = _backbone_of(model)
    backbone.trainable = False
    if feature_cache is not None:
        fitted = head.head_of(model, config)
        inputs: Inputs = _cached_inputs(model, config, data, split, val_split, feature_cache, views=cached_views, seed=seed,
                                        batch=config.batch_size * replicas)
    else:
        fitted, inputs = model, None
    with strategy.scope():
        build.compile_model(fitted, config, replicas=replicas)
    probed = _fit(fitted, model, config, data, split, val_split, epochs=probe_until, initial_epoch=initial_epoch,
                  seed=shuffle_seed, steps_per_epoch=steps_per_epoch, replicas=replicas, objective=objective,
                  patience=patience, callbacks=callbacks, history=history, verbose=verbose, stage=PROBE, inputs=inputs)
    if probe_until >= epochs or probed.stopped or (fine_tune_if is not None and not fine_tune_if(probed)):
        return probed

    # Second stage: everything trains, from the head the first stage left, at its own rate.
    probe_weights = model.get_weights()
    backbone.trainable = True
    tuning = dataclasses.replace(config, learning_rate=config.fine_tune_learning_rate)
    with strategy.scope():
        build.compile_model(model, tuning, replicas=replicas)
    tuned = _fit(model, model, tuning, data, split, val_split, epochs=epochs, initial_epoch=probe_until, seed=shuffle_seed + 1,
                 steps_per_epoch=steps_per_epoch, replicas=replicas, objective=objective, patience=patience,
                 callbacks=callbacks, history=history, verbose=verbose, stage=FINE_TUNE, rate_offset=probe_until)
    combined = {k: probed.history.get(k, []) + tuned.history.get(k, []) for k in {*probed.history, *tuned.history}}
    if objective is None or _better_or_equal(tuned, probed, objective):
        return dataclasses.replace(tuned, history=combined, seconds=probed.seconds + tuned.seconds)
    model.set_weights(probe_weights)  # fine-tuning never beat the probe: keep the probe's epoch
    return dataclasses.replace(probed, history=combined, seconds=probed.seconds + tuned.seconds)


# Values of history["stage"]: which stage of a staged trial an epoch belongs to.
PROBE, FINE_TUNE = 1.0, 2.0

# What a head trains on: (cached training features, validation batches), or None for the images.
Inputs = tuple[np.ndarray, np.ndarray | None] | None


def _backbone_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def _cached_inputs(model: keras.Model, config: TrialConfig, data: ImageData, split: str, val_split: str,
                   cache: FeatureCache, *, views: int, seed: int, batch: int) -> Inputs:
    extractor = head.features_model(model, config)

    def entry(part: str, views: int) -> np.ndarray:
        key = features.key_for(config, data, part, views=views, seed=seed)
        return cache.get(key, lambda: features.compute(extractor, data, key, batch, callbacks=[Interruptible()]))

    train_features = entry(split, views)
    val = np.asarray(entry(val_split, 1)[0], dtype=np.float32) if data.count(val_split) else None
    return train_features, val


def _better_or_equal(tuned: Trained, probed: Trained, objective: str) -> bool:
    first = best_metrics(probed.history, objective).get(objective)
    second = best_metrics(tuned.history, objective).get(objective)
    if first is None or second is None:
        return True
    return second == first or metrics.better(second, first, objective)


class _Stage(keras.callbacks.Callback):
    def __init__(self, stage: float):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["stage"] = self.stage


def _fit(
    fitted: keras.Model, model: keras.Model, config: TrialConfig, data: ImageData, split: str, val_split: str, *,
    epochs: int, initial_epoch: int, seed: int, steps_per_epoch: int | None, replicas: int, objective: str | None,
    patience: int | None, callbacks: Sequence[keras.callbacks.Callback], history: dict[str, list[float]],
    verbose: int, stage: float | None, rate_offset: int = 0, inputs: Inputs = None,
) -> Trained:
    """Fit `fitted` (the whole `model`, or its head on cached features: `inputs`) for one stage."""
    global_batch = config.batch_size * replicas
    if inputs is None:
        batches = data.dataset(
            split, config.image_size, global_batch, augmentation=config.augmentation,
            shuffle=True, seed=seed, repeat=steps_per_epoch is not None,
        )
        val_batches = data.dataset(val_split, config.image_size, global_batch) if objective is not None else None
    else:
        train_features, val_batches = inputs
        batches = features.feature_batches(train_features, data.labels(split), global_batch, shuffle=True, seed=seed,
                                           repeat=steps_per_epoch is not None)
    validation = None
    chain: list[keras.callbacks.Callback] = []
    if objective is not None:
        # First, so every callback after it sees the validation metrics it adds to the logs.
        validation = ValidationPass(val_batches, data.labels(val_split),
                                    monitor=objective, mode=metrics.direction(objective))
        chain.append(validation)
    schedule = learning_rate_schedule(config, epochs - rate_offset, replicas)
    chain += [
        keras.callbacks.LearningRateScheduler(
            schedule if not rate_offset else lambda epoch, *_: schedule(epoch - rate_offset)),
        keras.callbacks.TerminateOnNaN(),
        *([_Stage(stage)] if stage is not None else []),
        _History(history),
    ]
    early = None
    if objective is not None:
        # Always restore the best epoch: it is the one the trial is scored and saved by.
        early = keras.callbacks.EarlyStopping(monitor=objective, mode=metrics.direction(objective),
                                              restore_best_weights=True, patience=patience or epochs + 1)
        chain.append(early)
    chain += [*callbacks, EpochLine()]

    started = time.monotonic()
    fit = fitted.fit(batches, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
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
        stopped=bool(fitted.stop_training) and not (early is not None and early.stopped_epoch > 0),
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
