"""The optimizers a space's `optimizer` may name: plain data, turned into Keras optimizers by
`search.models.build.compile_model`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Optimizer:
    name: str
    keras_class: str  # in keras.optimizers
    options: Mapping[str, Any]
    description: str


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("adam", "Adam", {}, "Adam, Keras' defaults"),
    Optimizer("rmsprop", "RMSprop", {}, "RMSprop, Keras' defaults (the report's Xception and MobileNet)"),
    Optimizer("sgd", "SGD", {"momentum": 0.9}, "SGD with momentum 0.9"),
)}
