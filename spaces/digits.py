"""Offline demo: scikit-learn's 1,797 real handwritten digits, 10 classes.

The digits ship inside scikit-learn, so this runs anywhere with no download: they are
written once as PNG class folders under runs/data/digits and searched like any image
folder. ImageNet weights cannot be downloaded offline, so backbones start from scratch;
with weights="imagenet" on a connected machine the same space fine-tunes instead.
"""

from search import Data, Search

data = Data("builtin:digits", val_fraction=0.2)  # stratified, seeded split of one folder
search = Search(algorithm="random", max_trials=4, epochs=10, early_stopping=3, seed=0)


def hyperparameters(hp):
    hp.Choice("backbone", ["MobileNetV2", "MobileNet"])
    hp.Fixed("weights", "none")  # offline: no ImageNet download
    hp.Fixed("image_size", 32)  # the digits are 8x8; 32 is the smallest MobileNet input
    hp.Choice("batch_size", [32, 64])
    hp.Choice("head_width", [128, 256])
    hp.Float("dropout", 0.1, 0.3, step=0.1)
    hp.Choice("optimizer", ["adam", "rmsprop"])
    hp.Float("learning_rate", 1e-3, 3e-3, sampling="log")
    hp.Fixed("augmentation", "none")  # faces/flowers policies flip and rotate: wrong for digits
