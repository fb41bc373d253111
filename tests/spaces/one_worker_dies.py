"""The tiny space, whose first worker to start a trial dies there (SIGKILL, as a crash): for
the launcher's tests. ONE_WORKER_DIES names the file whose creation decides who it is."""

import os
import signal

import keras

from search import Data, Search

data = Data("builtin:digits")  # the tests pass --data with a smaller folder of real digits
search = Search(algorithm="tpe", max_trials=6, epochs=2, steps_per_epoch=2)


def hyperparameters(hp):
    hp.Int("units", 8, 64, step=8)
    hp.Fixed("image_size", 32)
    hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")


def build_model(hp, inputs, num_classes):
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)


class DieFirst(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        try:
            os.close(os.open(os.environ["ONE_WORKER_DIES"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def callbacks(hp):
    return [DieFirst()]
