"""The tiny space with trials that take TRIAL_SECONDS (default 16 s) each, sleeping (the
interpreter lock free) before their one epoch, and every worker posing as a machine of its
own (a process-id namespace of its own): the others can tell it is alive by its heartbeat
alone. For the tests that restart the study's database while workers start and train."""

import os
import time

import keras

from search import Data, Search
from search.liveness import workers

TRIAL_SECONDS = float(os.environ.get("TRIAL_SECONDS", "16"))

data = Data("builtin:digits")  # the tests pass --data with a smaller folder of real digits
search = Search(algorithm="tpe", max_trials=6, epochs=1, steps_per_epoch=2,
                options={"heartbeat_interval": 1, "grace_period": 12})

_elsewhere = f"machine-of-{os.getpid()}"
workers._namespace = lambda: _elsewhere
workers._this.cache_clear()


def hyperparameters(hp):
    hp.Int("units", 8, 64, step=8)
    hp.Fixed("image_size", 32)
    hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")


def build_model(hp, inputs, num_classes):
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(hp.get("units"), activation="relu")(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)


class Slow(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        time.sleep(TRIAL_SECONDS)


def callbacks(hp):
    return [Slow()]
