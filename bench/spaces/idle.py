"""Trials that do almost nothing (one step of a dense layer on 32 px digits), so that what a
search spends around its trials, handing them out among workers included, dominates:
bench/workers.py."""

import keras

from search import Data, Search

data = Data("builtin:digits")
search = Search(algorithm="tpe", max_trials=24, epochs=1, steps_per_epoch=1, options={"pruner": "none"})


def hyperparameters(hp):
    hp.Int("units", 4, 64)
    hp.Fixed("image_size", 32)
    hp.Float("learning_rate", 1e-3, 1e-1, sampling="log")


def build_model(hp, inputs, num_classes):
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hp.get("units"), activation="relu")(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)
