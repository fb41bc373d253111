"""The tiny space with every trial's first epoch stalled past the heartbeat's grace period,
the interpreter lock held all along: as TensorFlow holds it while it traces a large model's
first epoch. No thread of the worker runs meanwhile; only a process of its own can beat.

STALL_SECONDS sets the stall (default 7 s, against a grace period of 4 s); STALL_ELSEWHERE=1
makes each worker look as if it ran on a machine of its own (a process-id namespace of its
own), so that the others can tell it is alive by its heartbeat alone."""

import os
import sys
import time

import keras

from search import Data, Search

STALL_SECONDS = float(os.environ.get("STALL_SECONDS", "7"))

data = Data("builtin:digits")  # the tests pass --data with a smaller folder of real digits
search = Search(algorithm="tpe", max_trials=6, epochs=2, steps_per_epoch=2,
                options={"heartbeat_interval": 1, "grace_period": 4})

if os.environ.get("STALL_ELSEWHERE"):
    from search.liveness import workers

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


class Stall(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch != 0:
            return
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1000)  # no other thread of this process runs until it is restored
        try:
            end = time.monotonic() + STALL_SECONDS
            while time.monotonic() < end:
                pass
        finally:
            sys.setswitchinterval(interval)


def callbacks(hp):
    return [Stall()]
