"""A model of your own: a small convolutional network on the offline digits.

`build_model(hp, inputs, num_classes)` takes the trial's hyperparameters, the raw 0..255
pixels (image_size x image_size x 3) and the number of classes, and returns the
probabilities (or a whole keras.Model). Everything else works as with a backbone: the data
pipeline and augmentation, the optimizer, learning rate and schedule from `hp`, the
strategy, MLflow, early stopping, the validation metrics, ensembles, predict and export.
Declare the model's own hyperparameters in `hyperparameters(hp)` with the others, so that
the space reads like one sweep table, and read them in build_model with `hp.get(name)`.
"""

import keras

from search import Data, Search

data = Data("builtin:digits", val_fraction=0.2)
search = Search(algorithm="tpe", max_trials=8, epochs=12, early_stopping=3)


def hyperparameters(hp):
    hp.Int("filters", 16, 64, step=16)  # the first block's; each block doubles it
    hp.Int("blocks", 1, 3)
    hp.Float("dropout", 0.0, 0.4, step=0.1)
    hp.Fixed("image_size", 32)
    hp.Choice("batch_size", [32, 64])
    hp.Choice("optimizer", ["adam", "rmsprop"])
    hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")
    hp.Fixed("schedule", "cosine")


def build_model(hp, inputs, num_classes):
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for block in range(hp.get("blocks")):
        x = keras.layers.Conv2D(hp.get("filters") * 2**block, 3, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(hp.get("dropout"))(x)
    return keras.layers.Dense(num_classes, activation="softmax")(x)
