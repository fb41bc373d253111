"""The backbone registry: every keras.applications family, each with its preprocessing and sizes."""

from __future__ import annotations

import importlib

import keras
import numpy as np
import pytest

from search.errors import ModelError
from search.hparams import TrialConfig
from search.models.backbones import BACKBONES, PREPROCESSING, WEIGHTS, with_weights
from search.models.build import build_model


def test_every_keras_application_is_in_the_registry():
    # Fails when Keras adds a family: add it to search/models/backbones.py.
    applications = {name for name in dir(keras.applications) if name[0].isupper()}
    registered = {b.name for b in BACKBONES.values() if b.library == "keras"}
    assert registered == applications


def test_registry_entries_are_consistent():
    for key, entry in BACKBONES.items():
        assert entry.name == key
        assert entry.preprocessing in PREPROCESSING
        assert entry.min_size >= 32
        assert set(entry.weights) <= set(WEIGHTS) and "imagenet" in entry.weights
        assert entry.describe()
    assert BACKBONES["Xception"].min_size == 71 and BACKBONES["InceptionV3"].min_size == 75
    assert BACKBONES["efficientnet.EfficientNetB7"].weights == ("imagenet", "noisy-student")
    assert with_weights("noisy-student") == [f"efficientnet.EfficientNetB{i}" for i in range(8)]
    assert {BACKBONES[n].preprocessing for n in ("ResNet50", "ResNet101", "ResNet152", "VGG16", "VGG19")} == {"caffe"}
    assert [b.name for b in BACKBONES.values() if b.imagenet_size] == ["NASNetMobile", "NASNetLarge"]


def pixels(size: int) -> np.ndarray:
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    x[0, 0, 0] = [0, 0, 0]
    x[0, 0, 1] = [255, 255, 255]
    x[0, 0, 2] = [255, 0, 10]  # asymmetric, so a missing RGB->BGR swap shows
    return x


@pytest.mark.parametrize("name, size, reference", [
    ("InceptionV3", 75, "keras.applications.inception_v3"),
    ("VGG16", 32, "keras.applications.vgg16"),
    ("NASNetMobile", 32, "keras.applications.nasnet"),
    ("ConvNeXtTiny", 32, None),  # normalises 0..255 itself
])
def test_the_new_families_build_with_their_own_preprocessing(name, size, reference):
    model = build_model(TrialConfig(backbone=name, weights="none", image_size=size, head_width=8), 3)
    (backbone,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    x = pixels(size)
    fed = keras.Model(model.input, model.layers[model.layers.index(backbone) - 1].output)(x)
    expected = x if reference is None else importlib.import_module(reference).preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(fed), np.asarray(expected), rtol=1e-5, atol=1e-4)
    out = np.asarray(model(x, training=False))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_nasnet_imagenet_weights_need_their_own_size():
    with pytest.raises(ModelError, match="224 px images only, not 96: use image_size 224, or weights 'none'"):
        build_model(TrialConfig(backbone="NASNetMobile", weights="imagenet", image_size=96), 3)
