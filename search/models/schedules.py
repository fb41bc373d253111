"""Learning-rate schedules, per epoch, for `keras.callbacks.LearningRateScheduler`.

`SCHEDULES` is the vocabulary a space's `schedule` takes: each entry says what it does and
makes the per-epoch function from the trial's peak rate. Adding a schedule is one function
and one entry here. Only the warmup schedule scales with the number of replicas (the
report's `LR_MAX = 5e-5 * replicas`); the others use the rate as given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from search.errors import SearchError, did_you_mean

if TYPE_CHECKING:
    from search.hparams import TrialConfig

# The report's Level 3 steps: a new rate every 4 epochs, as fractions of the first one.
STEP_BOUNDARIES = (4, 8, 12, 16, 20)
STEP_FACTORS = (1.0, 0.4, 0.2, 0.1, 0.04, 0.02)


class Schedule(Protocol):
    """epoch -> rate; also takes (and ignores) the current rate, as LearningRateScheduler passes it."""

    def __call__(self, epoch: int, current: float | None = ..., /) -> float: ...


def warmup_exp(
    lr_max: float,
    *,
    lr_start: float = 1e-5,
    lr_min: float = 1e-5,
    rampup: int = 5,
    sustain: int = 0,
    decay: float = 0.8,
) -> Schedule:
    """The report's warmup + exponential decay: linear ramp, hold, then decay towards lr_min."""

    def schedule(epoch: int, current: float | None = None) -> float:
        if epoch < rampup:
            return float((lr_max - lr_start) / rampup * epoch + lr_start)
        if epoch < rampup + sustain:
            return float(lr_max)
        return float((lr_max - lr_min) * decay ** (epoch - rampup - sustain) + lr_min)

    return schedule


def step(
    lr: float,
    *,
    boundaries: Sequence[int] = STEP_BOUNDARIES,
    factors: Sequence[float] = STEP_FACTORS,
) -> Schedule:
    """`lr * factors[i]` from `boundaries[i-1]` on; the defaults are the report's Level 3 steps."""
    if len(factors) != len(boundaries) + 1:
        raise SearchError(
            f"step schedule needs one factor more than boundaries, got {len(factors)} factors "
            f"for {len(boundaries)} boundaries"
        )

    def schedule(epoch: int, current: float | None = None) -> float:
        index = sum(1 for b in boundaries if epoch >= b)
        return float(lr * factors[index])

    return schedule


def cosine(lr: float, epochs: int, *, floor: float = 0.0) -> Schedule:
    """Half a cosine from `lr` at epoch 0 down to `floor` at epoch `epochs`."""
    span = max(1, int(epochs))

    def schedule(epoch: int, current: float | None = None) -> float:
        progress = min(max(epoch, 0), span) / span
        return float(floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    return schedule


def constant(lr: float) -> Schedule:
    """The same rate every epoch."""

    def schedule(epoch: int, current: float | None = None) -> float:
        return float(lr)

    return schedule


@dataclasses.dataclass(frozen=True)
class Kind:
    """One value of the `schedule` hyperparameter."""

    name: str
    description: str
    # (peak rate, epochs, replicas, keyword constants the caller gave) -> the per-epoch function
    make: Callable[[float, int, int, dict[str, Any]], Schedule]


def _warmup(lr: float, epochs: int, replicas: int, constants: dict[str, Any]) -> Schedule:
    keys = ("lr_start", "lr_min", "rampup", "sustain", "decay")
    return warmup_exp(lr * max(1, int(replicas)), **{k: constants[k] for k in keys if k in constants})


SCHEDULES: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("constant", "learning_rate every epoch", lambda lr, epochs, replicas, _: constant(lr)),
    Kind("warmup_exp", "the report's Level 1: 1e-5 up to learning_rate x replicas in 5 epochs, then x0.8 an epoch",
         _warmup),
    Kind("step", "the report's Level 3: learning_rate, then x0.4, x0.2, x0.1, x0.04, x0.02 every 4 epochs",
         lambda lr, epochs, replicas, _: step(lr)),
    Kind("cosine", "half a cosine from learning_rate down to 0 over the trial's epochs",
         lambda lr, epochs, replicas, constants: cosine(lr, epochs, floor=constants.get("floor", 0.0))),
)}


def learning_rate_schedule(config: TrialConfig, epochs: int, replicas: int = 1, **constants: Any) -> Schedule:
    """The per-epoch rate for `config.schedule`, peaking at `config.learning_rate`.

    `constants` tune a schedule's own shape (warmup_exp: `lr_start`, `lr_min`, `rampup`,
    `sustain`, `decay`; cosine: `floor`); the defaults are the report's. The returned
    function also accepts (and ignores) the current rate, as `LearningRateScheduler` passes it.
    """
    kind = SCHEDULES.get(config.schedule)
    if kind is None:
        raise SearchError(f"unknown schedule {config.schedule!r}.{did_you_mean(str(config.schedule), SCHEDULES)} "
                          f"Use one of {', '.join(SCHEDULES)}.")
    return kind.make(float(config.learning_rate), int(epochs), int(replicas), constants)
