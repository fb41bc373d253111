"""Heads on a frozen backbone pretrained elsewhere: handwritten digits (60% train, 20% val)
through a MobileNetV2 trained on Fashion-MNIST and saved without its top, 96 px. Only the
head is searched, so every trial trains on the cached features: bench/search_efficiency.py.

The data folder and the weights file are made by that script (bench/two_stages.py's and
bench/frozen_heads.py's helpers), under runs/bench/.
"""

from search import Data, Search

data = Data("runs/bench/two_stages/digits")
search = Search(algorithm="random", max_trials=30, epochs=5, keep_models="best")


def hyperparameters(hp):
    hp.Fixed("backbone", "MobileNetV2")
    hp.Fixed("weights", "runs/bench/frozen_heads/MobileNetV2_96_fashion_notop.weights.h5")
    hp.Fixed("image_size", 96)
    hp.Fixed("fine_tune", "frozen")
    hp.Fixed("batch_size", 32)
    hp.Int("head_width", 32, 1024, sampling="log")
    hp.Float("dropout", 0.2, 0.5)
    hp.Choice("optimizer", ["adam", "rmsprop", "sgd"])
    hp.Float("learning_rate", 1e-5, 1e-1, sampling="log")
