"""A tiny model of the space's own (a dense layer on raw pixels) for tests of the machinery
around trials: crashes, resumes, locks, many workers. Its trials train in well under a second."""

import keras

from search import Data, Search

data = Data("builtin:digits")  # the tests pass --data with a smaller folder of real digits
search = Search(algorithm="random", max_trials=4, epochs=2, steps_per_epoch=2)


def hyperparameters(hp):
    hp.Int("units", 8, 64, step=8)
    hp.Fixed("image_size", 32)
    hp.Choice("batch_size", [8, 16])
    hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")


def build_model(hp, inputs, num_classes):
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hp.get("units"), activation="relu")(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)
