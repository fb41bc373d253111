"""A finished trial's memory is given back: its traced training graph does not outlive it."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import tensorflow as tf

from conftest import TINY

from search import compat
from search.engine.memory import TrialMemory
from search.engine.runner import run_search
from search.space import load_space


def _custom_gradients() -> set[str]:
    return {name for name in compat.gradient_registry() or () if name.startswith(compat.CUSTOM_GRADIENT_PREFIX)}


def _trace_a_train_step() -> weakref.ref:
    """Builds a model, traces one optimizer step as Keras does, and returns a weak reference
    to the traced graph; every strong reference is gone when this returns."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    optimizer = keras.optimizers.Adam()

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True), from_logits=True)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    x, y = np.random.rand(4, 8).astype("float32"), np.array([0, 1, 2, 0])
    step(x, y)
    return weakref.ref(step.get_concrete_function(x, y).graph)


def test_release_frees_the_traced_training_graph():
    memory = TrialMemory()
    memory.begin()
    graph = _trace_a_train_step()
    assert memory.release() >= 1  # the optimizer's all-reduce registered at least one
    gc.collect()
    assert graph() is None, "the trial's training graph outlived release()"
    assert not _custom_gradients() - memory._before


def test_release_keeps_what_was_registered_before_the_trial():
    outer = TrialMemory()
    _trace_a_train_step()  # registered before the trial begins: not the trial's to drop
    kept = _custom_gradients()
    trial = TrialMemory()
    _trace_a_train_step()
    assert _custom_gradients() > kept
    trial.release()
    assert _custom_gradients() == kept
    outer.release()
    assert not _custom_gradients() - outer._before


def test_a_search_leaves_no_trial_graph_behind(tmp_path, digits_folders):
    # Each traced training step used to pin its whole graph (150-200 MB for a MobileNetV2)
    # in TensorFlow's gradient registry until the process ended.
    before = _custom_gradients()
    outcome = run_search(load_space(TINY, data_path=str(digits_folders), max_trials=2), runs_dir=tmp_path, verbose=0,
                         tracking=False)
    assert outcome.status == "COMPLETED"
    assert _custom_gradients() == before
