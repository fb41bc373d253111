"""Per-epoch learning-rate schedules from the report, and a plot of one before training.

Each schedule is a plain function of the epoch number, for
`keras.callbacks.LearningRateScheduler`. Only the warmup schedule scales with the number
of replicas (the report's `LR_MAX = 5e-5 * replicas`); the others use the rate as given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from search.errors import SearchError, did_you_mean
from search.hparams import SCHEDULES, TrialConfig

# The report's Level 3 steps: a new rate every 4 epochs, as fractions of the first one.
STEP_BOUNDARIES = (4, 8, 12, 16, 20)
STEP_FACTORS = (1.0, 0.4, 0.2, 0.1, 0.04, 0.02)


class Schedule(Protocol):
    def __call__(self, epoch: int, lr: float | None = None) -> float: ...


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

    def schedule(epoch: int, lr: float | None = None) -> float:
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


def learning_rate_schedule(
    config: TrialConfig,
    epochs: int,
    replicas: int = 1,
    *,
    lr_start: float = 1e-5,
    lr_min: float = 1e-5,
    rampup: int = 5,
    sustain: int = 0,
    decay: float = 0.8,
    floor: float = 0.0,
) -> Schedule:
    """The per-epoch rate for `config.schedule`, peaking at `config.learning_rate`.

    `warmup_exp` uses `lr_start`, `lr_min`, `rampup`, `sustain`, `decay` (the report's
    constants by default) and `LR_MAX = learning_rate * replicas`; `cosine` decays to `floor`
    over `epochs`; `step` is the report's Level 3 steps relative to `learning_rate`.
    The returned function also accepts (and ignores) the current rate, as
    `LearningRateScheduler` passes it.
    """
    lr = float(config.learning_rate)
    kind = config.schedule
    if kind == "constant":
        return constant(lr)
    if kind == "warmup_exp":
        return warmup_exp(
            lr * max(1, int(replicas)),
            lr_start=lr_start,
            lr_min=lr_min,
            rampup=rampup,
            sustain=sustain,
            decay=decay,
        )
    if kind == "step":
        return step(lr)
    if kind == "cosine":
        return cosine(lr, epochs, floor=floor)
    raise SearchError(
        f"unknown schedule {kind!r}.{did_you_mean(str(kind), SCHEDULES)} Use one of {', '.join(SCHEDULES)}."
    )


def plot_schedule(fn: Callable[[int], float], epochs: int, path: Path, title: str = "") -> Path:
    """Plot the rate of each epoch to a PNG at `path` (as the report did before training)."""
    # Figure + Agg canvas directly: no pyplot, so no global backend or open-figure state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xs = list(range(max(1, int(epochs))))
    ys = [fn(epoch) for epoch in xs]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(xs, ys, marker="o", markersize=3)
    axes.set_xlabel("epoch")
    axes.set_ylabel("learning rate")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes.grid(True, alpha=0.3)
    axes.set_title(title or f"learning rate over {len(xs)} epochs")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path
