"""Ensemble members as Keras models: one servable model from several, and their predictions.

The ensemble is an ordinary functional model of built-in layers (Resizing, Rescaling, Add)
around the members, each nested as a sub-model under its own name, so
`keras.models.load_model` restores it with no custom objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from search.console import progress
from search.data.dataset import ImageData

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


def predict_split(model: keras.Model | str | Path, data: ImageData, split: str) -> np.ndarray:
    """(n, n_classes) probabilities for a split, in the data's order, at the model's input size."""
    if not isinstance(model, keras.Model):
        model = keras.models.load_model(model, compile=False)
    dataset = data.dataset(split, input_size(model), PREDICT_BATCH)
    batches = -(-data.count(split) // PREDICT_BATCH)
    predicted = [model.predict_on_batch(images) for images, _ in progress(dataset, f"predicting {split}", total=batches,
                                                                          unit="batch")]
    return np.concatenate(predicted).astype(np.float32) if predicted else np.zeros((0, model.output_shape[-1]), np.float32)
