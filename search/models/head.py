"""The classifier head: its layers, and the head of a built model as a model of its own.

`build_model` applies `head_layers` after the backbone's pooling. `head_of` takes those
same layer objects out of a built model and calls them on a features input, so that a head
trained on cached features (`search.models.features`) is trained inside the whole model too:
the two share every weight, and the whole model is saved, served and ensembled as usual.
"""

from __future__ import annotations

import keras

from search.hparams import TrialConfig


def head_widths(config: TrialConfig) -> list[int]:
    """Widths of the Dense layers between pooling and softmax: head_width, then halving."""
    return [max(1, int(config.head_width) // 2**i) for i in range(int(config.head_layers))]


def pool_name(config: TrialConfig) -> str:
    return f"{config.pooling}_pool"


def pooling_layer(config: TrialConfig) -> keras.layers.Layer:
    pool = keras.layers.GlobalAveragePooling2D if config.pooling == "avg" else keras.layers.GlobalMaxPooling2D
    return pool(name=pool_name(config))


def head_layers(config: TrialConfig, num_classes: int) -> list[keras.layers.Layer]:
    """The layers after the pooling, in the order they are applied (a plain chain)."""
    layers: list[keras.layers.Layer] = []
    if config.head_batchnorm:
        layers.append(keras.layers.BatchNormalization(name="head_bn"))
    for index, width in enumerate(head_widths(config), start=1):
        if config.dropout > 0:
            layers.append(keras.layers.Dropout(config.dropout, name=f"head_dropout_{index}"))
        layers.append(keras.layers.Dense(width, activation="relu", name=f"head_dense_{index}"))
        if config.head_batchnorm:
            layers.append(keras.layers.BatchNormalization(name=f"head_dense_{index}_bn"))
    if config.dropout > 0:
        layers.append(keras.layers.Dropout(config.dropout, name="head_dropout"))
    layers.append(keras.layers.Dense(int(num_classes), activation="softmax", dtype="float32", name="predictions"))
    return layers


def features_model(model: keras.Model, config: TrialConfig) -> keras.Model:
    """The part of a built model from raw pixels to its pooled features (what the cache holds)."""
    return keras.Model(model.inputs, model.get_layer(pool_name(config)).output, name=f"{model.name}_features")


def head_of(model: keras.Model, config: TrialConfig) -> keras.Model:
    """A model from pooled features to probabilities made of `model`'s own head layers.

    Training it trains `model`'s head: the layers (and their weights) are the same objects.
    """
    names = [layer.name for layer in model.layers]
    after = model.layers[names.index(pool_name(config)) + 1:]
    width = int(model.get_layer(pool_name(config)).output.shape[-1])
    features = keras.Input(shape=(width,), dtype="float32", name="features")
    x = features
    for layer in after:
        x = layer(x)
    return keras.Model(features, x, name=f"{model.name}_head")
