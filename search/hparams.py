"""The hyperparameters a space may declare: each one declared once, in `TrialConfig`.

A field of `TrialConfig` is the whole declaration of a hyperparameter: its name, type and
default, what it means, the words it takes (when it takes words) and the check of its value;
validation (`check_value`), the coercion of a value given as another number type (`coerce`),
`--list` and the README's table (`search.vocabulary`) all read it from there.

A space file declares some of these names with Keras Tuner's `hp`; every name it leaves
out takes its default. `TrialConfig` is the resolved set of values for one trial and is all
that `search.models` and `search.data` ever see. The vocabularies of the names that take
words live with the code that uses them: backbones and weights in `search.models.backbones`,
optimizers in `search.models.optimizers`, schedules in `search.models.schedules`,
augmentation policies in `search.data.policies` (their layers in `search.data.augment`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from search.core.values import lossless
from search.data.policies import DESCRIPTIONS as POLICIES
from search.errors import SpaceError, did_you_mean
from search.models.backbones import BACKBONES, WEIGHTS
from search.models.optimizers import OPTIMIZERS
from search.models.schedules import SCHEDULES

FINE_TUNE_MODES = {
    "all": "every layer trains",
    "frozen": "the backbone is frozen: only the head trains",
    "top": "the last fine_tune_layers layers of the backbone train (BatchNormalization stays frozen)",
    "probe_then_all": "the head trains alone for probe_epochs (on cached features), then every layer trains, "
                      "peaking at fine_tune_learning_rate on the schedule started anew",
}
POOLINGS = {"avg": "global average pooling", "max": "global max pooling"}


def _one_of(options: Mapping[str, Any]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and value in options:
            return None
        return f"must be one of {', '.join(options)}, got {value!r}.{did_you_mean(str(value), options)}"

    return check


def _number(low: float, high: float, *, high_open: bool = False, integer: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if integer and not isinstance(value, int):
            return f"must be a whole number, got {value!r}"
        upper_ok = value < high if high_open else value <= high
        if not (low <= value and upper_ok):
            bracket = ")" if high_open else "]"
            return f"must be in [{low}, {high}{bracket}, got {value!r}"
        return None

    return check


def _backbone(value: Any) -> str | None:
    if isinstance(value, str) and value in BACKBONES:
        return None
    return f"{value!r} is not a known backbone.{did_you_mean(str(value), BACKBONES)} Known: {', '.join(BACKBONES)}"


def _weights(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return f"must be one of {', '.join(WEIGHTS)} or the path of a weights file, got {value!r}"
    if value in WEIGHTS:
        return None
    if not Path(value).expanduser().is_file():
        return (
            f"the weights file '{value}' does not exist; give the path of a local weights file "
            f"(e.g. resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5), or one of {', '.join(WEIGHTS)}"
        )
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be True or False, got {value!r}"


def _declared(default: Any, meaning: str, check: Callable[[Any], str | None],
              words: Mapping[str, Any] | None = None) -> Any:
    """A hyperparameter's declaration: its default, meaning, the words it takes, its check."""
    return dataclasses.field(default=default, metadata={"meaning": meaning, "check": check, "words": words})


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """Every value that defines one trial's model and training."""

    backbone: str = _declared("MobileNetV2", "the pretrained network under the head", _backbone)
    # "imagenet", "none", or a path to a local weights file (e.g. the report's notop .h5).
    weights: str = _declared("imagenet", "what it starts from, or a weights file's path", _weights, WEIGHTS)
    # "all" trains everything, "frozen" trains the head only, "top" the last N layers.
    fine_tune: str = _declared("all", "which layers train", _one_of(FINE_TUNE_MODES), FINE_TUNE_MODES)
    fine_tune_layers: int = _declared(20, "how many last layers train with `top`", _number(1, 10_000, integer=True))
    image_size: int = _declared(224, "pixels (square); the pipeline resizes", _number(32, 1024, integer=True))
    # Per replica; the global batch is this times the number of replicas.
    batch_size: int = _declared(16, "per replica (the global batch: times the replicas)",
                                _number(1, 4096, integer=True))
    pooling: str = _declared("avg", "global pooling after the backbone", _one_of(POOLINGS), POOLINGS)
    head_batchnorm: bool = _declared(False, "BatchNormalization after the pooling and each Dense", _boolean)
    # Dense layers between pooling and the softmax; each one half as wide as the last
    # (the report's ResNet50 head: 2048 then 1024).
    head_layers: int = _declared(1, "Dense layers before the softmax, each half as wide", _number(0, 8, integer=True))
    head_width: int = _declared(512, "the first Dense layer's width", _number(1, 65_536, integer=True))
    dropout: float = _declared(0.2, "before each Dense layer, in [0, 1)", _number(0.0, 1.0, high_open=True))
    optimizer: str = _declared("adam", "the optimizer", _one_of(OPTIMIZERS), OPTIMIZERS)
    # The peak rate: LR_MAX of the warmup schedule (scaled by replicas), the first step
    # of the step schedule, the constant rate otherwise.
    learning_rate: float = _declared(1e-4, "the peak rate (warmup_exp's LR_MAX, step's first)", _number(1e-9, 10.0))
    schedule: str = _declared("constant", "the learning-rate schedule", _one_of(SCHEDULES), SCHEDULES)
    augmentation: str = _declared("none", "the augmentation policy", _one_of(POLICIES), POLICIES)
    label_smoothing: float = _declared(0.0, "in [0, 1)", _number(0.0, 1.0, high_open=True))
    # probe_then_all: epochs of the first stage (the head alone); the rest fine-tune everything
    # from that head, the schedule started anew at its own peak rate.
    probe_epochs: int = _declared(3, "`probe_then_all`'s head-only epochs", _number(1, 10_000, integer=True))
    fine_tune_learning_rate: float = _declared(1e-5, "the peak rate after them (the schedule starts anew)",
                                               _number(1e-9, 10.0))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrialConfig:
        """Build a config from hp values, ignoring names it does not hold (Keras Tuner's
        own `tuner/*`, a user model's own hyperparameters)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: coerce(k, v) for k, v in values.items() if k in known}
        for name, value in kwargs.items():
            check_value(name, value)
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialConfig))
DEFAULTS: dict[str, Any] = TrialConfig().as_dict()
_TYPES: dict[str, type] = {name: type(value) for name, value in DEFAULTS.items()}


def coerce(name: str, value: Any) -> Any:
    """`value` as the type `name` takes, when that loses nothing (64.0 -> 64 for an integer,
    3 -> 3.0 for a float); otherwise unchanged, for `check_value` to refuse."""
    kind = _TYPES.get(name)
    return value if kind is None else lossless(value, (kind,))


FIELDS = dataclasses.fields(TrialConfig)
CHECKS: dict[str, Callable[[Any], str | None]] = {f.name: f.metadata["check"] for f in FIELDS}
MEANING: dict[str, str] = {f.name: f.metadata["meaning"] for f in FIELDS}
WORDS: dict[str, Mapping[str, Any]] = {f.name: f.metadata["words"] for f in FIELDS if f.metadata["words"] is not None}


def check_name(name: str) -> None:
    if name not in NAMES:
        raise SpaceError(
            f"unknown hyperparameter {name!r}.{did_you_mean(name, NAMES)} "
            f"Known: {', '.join(NAMES)}"
        )


def check_value(name: str, value: Any) -> None:
    """Raise SpaceError naming the hyperparameter if `value` is not valid for it."""
    check_name(name)
    problem = CHECKS[name](value)
    if problem:
        raise SpaceError(f"hyperparameter {name!r}: {problem}")


def check_declared(name: str, values: Iterable[Any], *, own_model: bool = False) -> None:
    """Raise SpaceError when a value a space declares for `name` is not one it takes. A space
    with its own model (`build_model`) gives meaning to names that are not built in."""
    if own_model and name not in NAMES:
        return
    for value in values:
        check_value(name, coerce(name, value))
