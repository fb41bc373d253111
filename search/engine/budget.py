"""A time budget for a search (`Search(time_budget="2h")`, `--time-budget 2h`), as a Kaggle
session has one: Optuna's `timeout` stops asking for trials, this also stops the running one.

No trial starts that could not finish its first epoch within the budget: the first epoch of
the trials so far (the longest, tracing included) is the estimate. The running trial is
stopped at the budget after the batch in progress; its epoch is validated and its best epoch
kept like any other's, and the search then ends, the ensemble step included. (The Keras
callback that stops a trial is search.engine.tuner's: this module loads no Keras, so that
space files are checked without it.)
"""

from __future__ import annotations

import time

from search.core.durations import parse

__all__ = ["Budget", "BudgetSpent", "minutes", "parse"]

def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class BudgetSpent(Exception):
    """The search ends here: its time budget cannot fit another trial, or ran out in one."""


class Budget:
    """A deadline for one process's search, and what it was spent on."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.first_epochs: list[float] = []  # the first epoch of each trial here, tracing included
        self.training = 0.0
        self.stopped_trial: str | None = None  # a trial stopped at the deadline
        self.refused: float | None = None  # the estimate that kept the next trial from starting

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check_room_for_a_trial(self) -> None:
        """BudgetSpent unless the next trial can finish its first epoch within the budget."""
        estimate = max(self.first_epochs, default=0.0)
        if self.left() <= 0 or estimate > self.left():
            self.refused = estimate
            raise BudgetSpent()

    def over(self) -> bool:
        return time.monotonic() >= self.deadline

    def summary(self, finished: int, total: int) -> str:
        used = time.monotonic() - self.started
        line = (f"Time budget {minutes(self.seconds)}: used {minutes(used)} ({minutes(self.training)} training, "
                f"{minutes(used - self.training)} the rest); {finished} of {total} trials done")
        if self.stopped_trial is not None:
            line += f"; trial {self.stopped_trial} was stopped at the budget, its best epoch kept"
        if self.refused is not None:
            line += (f"; no trial started after that: the next one needed ~{minutes(self.refused)} for its first "
                     f"epoch and {minutes(max(0.0, self.left()))} were left")
        return line + "."
