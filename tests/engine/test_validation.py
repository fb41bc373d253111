"""search.validation: the one validation pass gives Keras' metrics and the restored epoch's probabilities."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from search.models.build import SparseCategoricalCrossentropyWithSmoothing
from search.engine.validation import PER_CLASS, EpochLine, ValidationPass


def _digits() -> tuple[tf.data.Dataset, tf.data.Dataset, np.ndarray]:
    digits = load_digits()
    x = (digits.images[..., None] * (255.0 / 16.0)).astype("float32")
    y = digits.target.astype("int32")
    train = tf.data.Dataset.from_tensor_slices((x[:1200], y[:1200])).batch(64)
    val = tf.data.Dataset.from_tensor_slices((x[1200:], y[1200:])).batch(50)  # a partial last batch
    return train, val, y[1200:]


def _model(smoothing: float) -> keras.Model:
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10, activation="softmax"),
    ])
    loss = SparseCategoricalCrossentropyWithSmoothing(smoothing) if smoothing else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss, metrics=["accuracy"])
    return model


@pytest.mark.parametrize(("monitor", "mode", "smoothing"), [("val_accuracy", "max", 0.0), ("val_loss", "min", 0.1)])
def test_metrics_match_keras_and_probabilities_match_the_restored_weights(monitor, mode, smoothing):
    train, val, labels = _digits()
    model = _model(smoothing)
    validation = ValidationPass(val, labels, monitor=monitor, mode=mode)
    stop = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, restore_best_weights=True, patience=99)
    history = model.fit(train, epochs=4, callbacks=[validation, stop], verbose=0).history
    scores = history[monitor]
    best = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
    assert validation.best_epoch == best == stop.best_epoch
    loss, accuracy = model.evaluate(val, verbose=0)  # Keras' own validation, on the restored weights
    assert history["val_loss"][best] == pytest.approx(loss, rel=1e-5)
    assert history["val_accuracy"][best] == pytest.approx(accuracy, abs=1e-6)
    assert np.allclose(validation.probabilities, model.predict(val, verbose=0), atol=1e-6)
    assert 0.5 < history["val_accuracy"][best] <= 1.0  # it learned: the numbers are not a constant


def test_labels_come_from_the_dataset_when_records_were_dropped():
    train, val, labels = _digits()
    model = _model(0.0)
    validation = ValidationPass(val, labels[:-3], monitor="val_accuracy", mode="max")  # 3 "unreadable" records
    model.fit(train, epochs=1, callbacks=[validation], verbose=0)
    assert np.array_equal(validation.labels, labels)
    assert validation.probabilities.shape == (len(labels), 10)


def test_without_the_monitor_in_the_logs_the_latest_epoch_is_kept():
    # EarlyStopping then restores nothing: the model ends on its last epoch's weights.
    train, val, labels = _digits()
    model = _model(0.0)
    validation = ValidationPass(val, labels, monitor="val_top_5_accuracy", mode="max")
    model.fit(train, epochs=2, callbacks=[validation], verbose=0)
    assert validation.best_epoch == 1 and validation.best is None
    assert np.allclose(validation.probabilities, model.predict(val, verbose=0), atol=1e-6)


def test_the_epoch_line_leaves_out_per_class_accuracies_that_the_history_keeps(capsys):
    train, val, labels = _digits()
    model = _model(0.0)
    validation = ValidationPass(val, labels, monitor="val_accuracy", mode="max")
    history = model.fit(train, epochs=2, callbacks=[validation, EpochLine()], verbose=2).history
    printed = capsys.readouterr().out
    assert "val_accuracy" in printed and "val_f1" in printed and PER_CLASS not in printed
    assert len([k for k in history if k.startswith(PER_CLASS)]) == 10
