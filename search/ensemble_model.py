"""Ensemble members as Keras models: one servable model from several, their predictions, and
their refit on train+val.

The ensemble is an ordinary functional model of built-in layers (Resizing, Rescaling, Add)
around the members, each nested as a sub-model under its own name, so
`keras.models.load_model` restores it with no custom objects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from search.data import ImageData
from search.memory import TrialMemory

PREDICT_BATCH = 64


def input_size(model: keras.Model) -> int:
    """The square image size a model takes, from its input shape (None, size, size, 3)."""
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[1] != shape[2] or shape[1] is None:
        raise ValueError(f"{model.name}: expected a square image input (None, size, size, 3), got {shape}")
    return int(shape[1])


def build_ensemble_model(
    member_paths: Sequence[str | Path],
    weights: Sequence[float],
    *,
    image_size: int | None = None,
    names: Sequence[str] | None = None,
) -> keras.Model:
    """One model taking raw 0..255 images and returning sum(w_i * member_i) / sum(w_i).

    The input is `image_size` square (default: the largest member's size); each member of
    another size gets a bilinear `Resizing` to its own. `names` (e.g. trial ids) name the
    nested members: ``member_<name>``.
    """
    if not member_paths or len(member_paths) != len(weights):
        raise ValueError(f"need one weight per member (>= 1 member), got {len(member_paths)} and {len(weights)}")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be > 0, got {list(weights)}")
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(len(member_paths))]
    if len(set(names)) != len(names) or len(names) != len(member_paths):
        raise ValueError(f"`names` must be unique, one per member, got {names}")
    members = [keras.models.load_model(p, compile=False) for p in member_paths]
    sizes = [input_size(m) for m in members]
    size = image_size or max(sizes)
    total = float(sum(weights))

    inputs = keras.Input((size, size, 3), name="image")
    scaled = []
    for member, member_size, weight, name in zip(members, sizes, weights, names):
        # Rewrap so every member is one layer with a unique name: loaded models are all "functional".
        wrapped = keras.Model(member.inputs[0], member.outputs[0], name=f"member_{name}")
        x = inputs
        if member_size != size:
            x = keras.layers.Resizing(member_size, member_size, name=f"resize_{name}")(x)
        y = wrapped(x)
        scaled.append(keras.layers.Rescaling(weight / total, name=f"weight_{name}")(y))
    outputs = scaled[0] if len(scaled) == 1 else keras.layers.Add(name="weighted_average")(scaled)
    return keras.Model(inputs, outputs, name="ensemble")


def save_model(model: keras.Model, path: Path) -> None:
    """Save atomically: a kill mid-save leaves the previous model, never half of one."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def predict_split(model: keras.Model | str | Path, data: ImageData, split: str) -> np.ndarray:
    """(n, n_classes) probabilities for a split, in the data's order, at the model's input size."""
    if not isinstance(model, keras.Model):
        model = keras.models.load_model(model, compile=False)
    dataset = data.dataset(split, input_size(model), PREDICT_BATCH)
    # A known length: Keras warns "ran out of data" at the end of a dataset of unknown length.
    batches = -(-data.count(split) // PREDICT_BATCH)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)


def refit_epochs(record: dict[str, Any], objective: str) -> int:
    """Epochs to retrain a trial for: up to its best epoch (the weights it kept), else all it ran."""
    scores = record.get("history", {}).get(objective) or []
    finite = [(s, i) for i, s in enumerate(scores) if s is not None]
    if not finite:
        return max(1, int(record.get("epochs_run") or 1))
    best = min(finite)[1] if "loss" in objective else max(finite, key=lambda item: (item[0], -item[1]))[1]
    return best + 1


def refit_member(
    record: dict[str, Any],
    data: ImageData,
    path: Path,
    *,
    epochs: int,
    steps_per_epoch: int | None,
    seed: int,
    verbose: int = 0,
) -> Path:
    """Retrain a trial's configuration from scratch on train+val and save it to `path`."""
    from search import models, schedules
    from search.hparams import TrialConfig

    config = TrialConfig.from_values(record["config"])
    keras.backend.clear_session()
    memory = TrialMemory()
    keras.utils.set_random_seed(seed)
    model = models.build_model(config, data.num_classes)
    models.compile_model(model, config, replicas=1)
    common = {"augmentation": config.augmentation, "shuffle": True, "seed": seed}
    train_val = data.dataset("train", config.image_size, config.batch_size, **common).concatenate(
        data.dataset("val", config.image_size, config.batch_size, **common)
    )
    if steps_per_epoch is not None:
        train_val = train_val.repeat()
    else:  # a known length, or Keras warns "ran out of data" after every epoch
        batches = sum(-(-data.count(split) // config.batch_size) for split in ("train", "val"))
        train_val = train_val.apply(tf.data.experimental.assert_cardinality(batches))
    model.fit(
        train_val, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
        callbacks=[
            keras.callbacks.LearningRateScheduler(schedules.learning_rate_schedule(config, epochs, 1)),
            keras.callbacks.TerminateOnNaN(),
        ],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, path)
    del model
    memory.release()
    return path
