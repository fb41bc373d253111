"""The backbones a space may choose, and the weights each can start from.

Plain data, no Keras import, so that a space file's backbone names are checked before
anything heavy loads. `search.models.build` turns an entry into a model. Adding a backbone
is one entry here (and a line in tests/models/test_backbones.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# How a backbone wants its 0..255 RGB input scaled (see search.models.build):
PREPROCESSING = {
    "tf": "scaled to [-1, 1]",
    "torch": "scaled to [0, 1], then ImageNet mean and std per channel",
    "caffe": "RGB to BGR, ImageNet mean subtracted",
    "none": "raw 0..255: the backbone normalises its input itself",
}

# Weights keywords; anything else is the path of a weights file (the report's notop .h5).
WEIGHTS = {
    "imagenet": "ImageNet weights, downloaded by Keras (or the efficientnet package) on first use",
    "none": "random initialisation: training from scratch",
    "noisy-student": "the efficientnet package's Noisy Student weights (efficientnet.* backbones only)",
}


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One backbone: where its constructor is, how its input is scaled, what sizes it takes."""

    name: str
    # "keras.applications.<Name>" or "efficientnet.tfkeras.<Name>" (the package the report used).
    constructor: str
    preprocessing: str
    min_size: int = 32
    weights: tuple[str, ...] = ("imagenet",)
    # Its ImageNet weights exist for this input size only (NASNet).
    imagenet_size: int | None = None
    # Extra keyword arguments for the constructor.
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def library(self) -> str:
        return "efficientnet" if self.constructor.startswith("efficientnet.") else "keras"

    def describe(self) -> str:
        sizes = f">= {self.min_size} px" + (f", {self.imagenet_size} px with ImageNet weights" if self.imagenet_size else "")
        return f"{self.constructor}; input {PREPROCESSING[self.preprocessing]}; {sizes}"


def _entries() -> list[Backbone]:
    def keras_app(name: str, preprocessing: str, **extra: Any) -> Backbone:
        return Backbone(name, f"keras.applications.{name}", preprocessing, **extra)

    with_own_preprocessing = {"options": {"include_preprocessing": True}}
    entries = [keras_app("Xception", "tf", min_size=71)]
    entries += [keras_app(f"DenseNet{depth}", "torch") for depth in (121, 169, 201)]
    entries += [keras_app(f"EfficientNetB{i}", "none") for i in range(8)]  # they normalise 0..255 themselves
    entries += [keras_app(f"EfficientNetV2{v}", "none", **with_own_preprocessing)
                for v in ("B0", "B1", "B2", "B3", "S", "M", "L")]
    entries += [keras_app(f"ResNet{depth}", "caffe") for depth in (50, 101, 152)]
    entries += [keras_app(f"ResNet{depth}V2", "tf") for depth in (50, 101, 152)]
    entries += [keras_app("MobileNet", "tf"), keras_app("MobileNetV2", "tf")]
    entries += [keras_app(f"MobileNetV3{size}", "none", **with_own_preprocessing) for size in ("Small", "Large")]
    entries += [keras_app(f"ConvNeXt{size}", "none", **with_own_preprocessing)
                for size in ("Tiny", "Small", "Base", "Large", "XLarge")]
    entries += [keras_app("InceptionV3", "tf", min_size=75), keras_app("InceptionResNetV2", "tf", min_size=75)]
    entries += [keras_app("VGG16", "caffe"), keras_app("VGG19", "caffe")]
    entries += [keras_app("NASNetMobile", "tf", imagenet_size=224), keras_app("NASNetLarge", "tf", imagenet_size=331)]
    entries += [Backbone(f"efficientnet.EfficientNetB{i}", f"efficientnet.tfkeras.EfficientNetB{i}", "torch",
                         weights=("imagenet", "noisy-student")) for i in range(8)]
    return entries


BACKBONES: dict[str, Backbone] = {entry.name: entry for entry in _entries()}


def with_weights(keyword: str) -> list[str]:
    """The backbones that have `keyword` weights."""
    return [b.name for b in BACKBONES.values() if keyword in b.weights]
