"""A trial trained k times, once per fold (`Search(folds=k)`): its cross-validated result.

Each fold's model trains on the other k-1 folds and is validated (and early-stopped) on its
own fold, through the same trial function as a one-split trial (`search.engine.trial`).
The trial is scored by the mean of its folds' best-epoch metrics, with their spread
(`<metric>_fold_std`), and keeps:

- out-of-fold probabilities: every train+val image predicted by the fold model that never
  saw it, in train+val order, as the trial's `val_probabilities.npy` (the ensemble chooses
  its members on them, `val_labels.npy` holding the train+val labels);
- the k fold models averaged as one Keras model, its `model.keras`: what the champion serves
  (`search.ensemble --refit` retrains a single model on all the images instead).

The pruner is not asked between epochs: a fold's curve is not comparable with another
fold's at the same epoch, and a trial stopped after some folds has no out-of-fold
probabilities for the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from search import metrics
from search.data.dataset import TRAIN_VAL, ImageData
from search.engine import trial as training
from search.results.records import FOLD_STD

_FOLD_SEED_STEP = 2_654_435_761  # keeps each fold's weight seed apart from every other trial's


class _Fold(keras.callbacks.Callback):
    """Adds the fold (1-based) to each epoch's logs, so curves logged per epoch can be told apart."""

    def __init__(self, fold: int):
        super().__init__()
        self.fold = fold

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["fold"] = float(self.fold)


def train_folds(config: Any, data: ImageData, strategy: Any, *, folds: int, fold_seed: int,
                seed: int, objective: str, history: dict[str, list[float]], callbacks: Sequence[Any] = (),
                **train_options: Any) -> training.Trained:
    """Train `config` once per fold; the returned model averages the fold models, its
    probabilities are out-of-fold over train+val, its `best` the folds' mean and spread."""
    splits = data.make_folds(folds, fold_seed)
    out_of_fold: np.ndarray | None = None
    fold_bests: list[dict[str, float]] = []
    histories: list[dict[str, list[float]]] = []
    models: list[keras.Model] = []
    seconds = 0.0
    images = 0
    for fold, (train_split, held_split, held) in enumerate(splits):
        fold_history: dict[str, list[float]] = {}
        trained = training.train(
            config, data, strategy, seed=(seed + fold * _FOLD_SEED_STEP) % 2**32, split=train_split,
            val_split=held_split, objective=objective, history=fold_history,
            callbacks=[_Fold(fold + 1), *callbacks], **train_options,
        )
        histories.append(fold_history)
        if trained.stopped or trained.probabilities is None:
            raise training.TrialError(f"fold {fold + 1} of {folds} was stopped before its last epoch (the time "
                                      "budget): the trial has no out-of-fold predictions for every image")
        if out_of_fold is None:
            out_of_fold = np.zeros((data.count(TRAIN_VAL), trained.probabilities.shape[1]), np.float32)
        out_of_fold[held] = trained.probabilities
        fold_bests.append(training.best_metrics(trained.history, objective))
        seconds += trained.seconds
        images += trained.train_images
        models.append(trained.model)
        print(f"  fold {fold + 1}/{folds}: {objective} {fold_bests[-1].get(objective, float('nan')):.4f} "
              f"on {len(held)} held-out images", flush=True)
        del trained
    history.update(_mean_history(histories))
    assert out_of_fold is not None
    return training.Trained(model=averaged(models), history=history, seconds=seconds, probabilities=out_of_fold,
                            best_epoch=None, train_images=images, best=summary(fold_bests))


def averaged(models: list[keras.Model]) -> keras.Model:
    """One model of built-in layers whose output is the mean of the fold models' probabilities."""
    inputs = keras.Input(models[0].input_shape[1:], name="image")
    # Rewrapped so that each fold model is one layer with a unique name.
    outputs = [keras.Model(m.inputs[0], m.outputs[0], name=f"fold{k + 1}")(inputs) for k, m in enumerate(models)]
    return keras.Model(inputs, keras.layers.Average(name="fold_average")(outputs), name="folds")


def summary(fold_bests: list[dict[str, float]]) -> dict[str, float]:
    """The folds' mean of every metric they all have, and the spread of the search's metrics."""
    shared = set.intersection(*(set(b) for b in fold_bests))
    best = {k: float(np.mean([b[k] for b in fold_bests])) for k in sorted(shared) if k != "fold"}
    for key in sorted(shared & set(metrics.METRICS)):
        best[key + FOLD_STD] = float(np.std([b[key] for b in fold_bests]))
    return best


def _mean_history(histories: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Each epoch's metrics averaged over the folds that ran it (early stopping ends folds apart)."""
    keys = sorted({k for h in histories for k in h} - {"fold"})
    mean: dict[str, list[float]] = {}
    for key in keys:
        longest = max(len(h.get(key, [])) for h in histories)
        mean[key] = [float(np.mean([h[key][e] for h in histories if len(h.get(key, [])) > e])) for e in range(longest)]
    return mean
