"""Where a search's trials come from: the `TrialSource` protocol, and the factory that picks one.

The search loop (`search.engine.tuner`) asks a source for a trial and its values, reports
each epoch (the source may prune it), tells it the result, and asks how many trials have
finished. Two sources implement it: Keras Tuner's oracles (`search.engine.kt_source`) and an
Optuna study (`search.engine.optuna_source`). `search.engine.factory` is the one place that
looks at which library runs the algorithm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from search.core.hooks import TrialResult

if TYPE_CHECKING:
    import keras_tuner as kt

# The id under which this process asks a Keras Tuner oracle for trials.
TUNER_ID = "tuner0"


@dataclasses.dataclass
class Asked:
    """A trial handed out by a source: its id, its place, and the values to train it with."""

    trial_id: str
    number: int  # 1-based: its position in the search (across workers of a shared study)
    hyperparameters: kt.HyperParameters  # the values, as the space's build_model and callbacks take them
    epochs: int
    initial_epoch: int = 0
    resume_from: str | None = None  # Hyperband: the trial whose weights this one continues
    runs_again: tuple[str, ...] = ()  # the trials of dead workers this one runs again (an Optuna retry)

    @property
    def values(self) -> dict[str, Any]:
        """The values as tables show them (without Keras Tuner's own `tuner/` entries)."""
        return {k: v for k, v in self.hyperparameters.values.items() if not k.startswith("tuner/")}


class TooManyFailures(Exception):
    """The source stops the search: too many trials in a row failed."""


class TrialSource(Protocol):
    """What the search loop needs from an algorithm's library."""

    # Where Keras Tuner's own state lives in the runs folder (it also declares the space).
    project: str
    # The oracle whose state that folder holds.
    oracle: kt.Oracle
    @property
    def storage(self) -> str | None:
        """The shared storage of a study many workers run (None: this process's search alone)."""

    def open(self, directory: Path) -> None:
        """Open the source's state kept in the runs folder `directory` (before its Keras Tuner state is read)."""

    def connect(self, on_recovered: Callable[[dict[str, Any]], None], on_lost: Callable[[str], None]) -> None:
        """Calls for a trial an earlier process recorded and a trial whose worker died."""

    def restore(self, records: list[dict[str, Any]]) -> int:
        """Give the source the ended trials of `records` it does not know (its state was lost);
        returns how many it was given."""

    def pending(self) -> list[str]:
        """Trials the source would hand out again that may have ended in a process that stopped."""

    def tell_recorded(self, trial_id: str, record: dict[str, Any]) -> None:
        """Tell a pending trial the result its record holds, instead of running it again."""

    def ask(self) -> Asked | None:
        """The next trial, or None when the search has all its trials."""

    def report(self, trial_id: str, epoch: int, logs: dict[str, float]) -> bool:
        """An epoch's metrics (0-based epoch); True: stop this trial now (pruned)."""

    def tell(self, trial_id: str, result: TrialResult) -> None:
        """The trial's result, once its record is written. TooManyFailures stops the search."""

    def finished(self) -> int:
        """The search's trials that ended (every worker's)."""

    def completed(self) -> int:
        """The trials with a result that other workers of a shared study ran (0 when not shared)."""

    def close(self) -> None:
        """This process is done with the source (its trials stay in the study)."""
