"""One validation pass per epoch that also keeps the probabilities ensembles need.

Keras' own validation (`fit(validation_data=...)`) traces a test graph and returns only
metrics; a trial then needed one more pass, with predict's graph, to store its validation
probabilities. `ValidationPass` validates with `model.predict` instead, computes the same
`val_loss` and `val_accuracy` Keras would (and macro F1, top-5 and per-class accuracy from
the same probabilities: `search.metrics`), and keeps the probabilities of the epoch that
EarlyStopping restores: one traced graph and one validation pass fewer per trial.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from search import metrics

# Inputs given as an array (cached features) are predicted this many at a time.
ARRAY_BATCH = 2048
# Per epoch, each class's val accuracy (recall) as `val_class_accuracy_007`.
PER_CLASS = "val_class_accuracy_"


class ValidationPass(keras.callbacks.Callback):
    """Adds the validation metrics to each epoch's logs; keeps the best epoch's probabilities.

    Put it first in `callbacks`: the callbacks after it (EarlyStopping, pruners, progress,
    History) read the validation metrics it adds. "Best" follows EarlyStopping: the first
    epoch, then any epoch strictly better on `monitor`; when the logs lack `monitor`,
    EarlyStopping restores nothing, so the latest epoch's probabilities are kept.
    """

    def __init__(self, dataset: tf.data.Dataset | np.ndarray, labels: np.ndarray, *, monitor: str, mode: str):
        super().__init__()
        self.dataset, self.labels = dataset, np.asarray(labels)
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.probabilities: np.ndarray | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        probabilities = self._predict()
        labels = self._labels_for(len(probabilities))
        loss_fn = self.model.loss if callable(self.model.loss) else keras.losses.get(self.model.loss)
        loss = np.mean(keras.ops.convert_to_numpy(loss_fn(labels, probabilities)))  # a function: per image
        extra = sum(float(keras.ops.convert_to_numpy(x)) for x in self.model.losses)  # regularizers
        logs["val_loss"] = float(loss) + extra
        logs.update(metrics.validation_metrics(probabilities, labels))
        for index, value in enumerate(metrics.per_class_accuracy(probabilities, labels)):
            if np.isfinite(value):
                logs[f"{PER_CLASS}{index:03d}"] = float(value)
        current = logs.get(self.monitor)
        if current is None:
            self.best_epoch, self.probabilities = epoch, probabilities
            return
        if self.best is None or (current < self.best if self.mode == "min" else current > self.best):
            self.best, self.best_epoch, self.probabilities = float(current), epoch, probabilities

    def _predict(self) -> np.ndarray:
        if isinstance(self.dataset, np.ndarray):  # cached features: large steps, without predict's per-call set-up
            return np.concatenate([np.asarray(self.model.predict_on_batch(self.dataset[start:start + ARRAY_BATCH]),
                                              dtype=np.float32) for start in range(0, len(self.dataset), ARRAY_BATCH)])
        return np.asarray(self.model.predict(self.dataset, verbose=0), dtype=np.float32)

    def _labels_for(self, count: int) -> np.ndarray:
        """The labels in prediction order; read from the dataset when records were dropped
        (an unreadable image in a TFRecord is skipped, not known up front)."""
        if len(self.labels) != count and not isinstance(self.dataset, np.ndarray):
            self.labels = np.concatenate([y for _, y in self.dataset.as_numpy_iterator()])
        return self.labels


class EpochLine(keras.callbacks.ProgbarLogger):
    """Keras' progress line, less the per-class accuracies: one number per class (104 for the
    flowers) would fill the screen every epoch. They still reach the history, MLflow and
    trials.csv. Put it last in `callbacks`, so that the line shows what the others added."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_end(epoch, {k: v for k, v in (logs or {}).items() if not k.startswith(PER_CLASS)})
