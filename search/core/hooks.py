"""What the search tells the outside world: the hook interface and the records it passes.

Tracking (MLflow), progress printing and results tables all plug in here, so the search
loop knows none of them. A hook that raises is reported once and then ignored: observing a
search must never fail it.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.core.status import TrialStatus

if TYPE_CHECKING:
    from search.hparams import TrialConfig

log = logging.getLogger("search")

# How tables name a trial of a space's own build_model where others name their backbone.
OWN_MODEL = "build_model"


@dataclasses.dataclass
class SearchInfo:
    """One search: a space run against one dataset in one runs directory."""

    name: str
    space_path: Path
    space_dir: Path  # runs/<name>/
    settings: dict[str, Any]  # the Search(...) settings after --set overrides
    data: dict[str, Any]  # the dataset fingerprint (layout, classes, counts)
    strategy: str
    replicas: int
    seed: int
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrialInfo:
    trial_id: str
    number: int  # 1-based: the position in a Keras Tuner search, the study trial's number + 1 with Optuna
    total: int  # max trials
    values: dict[str, Any]  # the hp values as the algorithm chose them
    config: TrialConfig
    dir: Path  # runs/<name>/trials/<trial_id>/
    epochs: int
    initial_epoch: int = 0
    finished: int = 0  # trials of the search (all workers) finished when this one began
    own_model: bool = False  # built by the space's build_model, not a backbone and head

    @property
    def model(self) -> str:
        """What the trial trains, as tables and plots name it: its backbone, or "build_model"."""
        return OWN_MODEL if self.own_model else self.config.backbone


@dataclasses.dataclass
class TrialResult:
    status: TrialStatus
    history: dict[str, list[float]]  # per epoch: loss, accuracy, val_loss, val_accuracy, learning_rate
    epochs_run: int
    seconds: float
    best: dict[str, float] = dataclasses.field(default_factory=dict)  # best-epoch metrics
    params: int | None = None
    size_mb: float | None = None
    model_path: Path | None = None
    val_probabilities_path: Path | None = None  # (n_val, n_classes) float32 .npy, val order
    train_images: int = 0
    error: str | None = None
    note: str | None = None  # e.g. "stopped at the time budget"

    def __post_init__(self) -> None:
        self.status = TrialStatus(self.status)  # a record's word, or a typo, fails here

    @property
    def seconds_per_epoch(self) -> float | None:
        return self.seconds / self.epochs_run if self.epochs_run else None

    @property
    def images_per_second(self) -> float | None:
        if not self.epochs_run or not self.seconds:
            return None
        return self.train_images * self.epochs_run / self.seconds


class SearchHooks:
    """Override any of these; the defaults do nothing."""

    def on_search_begin(self, search: SearchInfo) -> None: ...

    def on_trial_begin(self, search: SearchInfo, trial: TrialInfo) -> None: ...

    def on_epoch_end(self, search: SearchInfo, trial: TrialInfo, epoch: int, logs: dict[str, float]) -> None: ...

    def on_trial_end(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> None: ...

    def on_trial_lost(self, search: SearchInfo, trial_id: str) -> None:
        """A shared study took trial `trial_id`'s worker (another process, maybe on another
        machine) for dead: that worker will never end what it had open for the trial."""

    def on_search_end(self, search: SearchInfo, status: TrialStatus) -> None:
        """`status` is COMPLETED, STOPPED (by its time budget), FAILED (the search stopped on
        errors) or KILLED."""

    def on_search_pause(self, search: SearchInfo) -> None:
        """This process stops here and a fresh one resumes the search (`trials_per_process`):
        finish any work in flight, but leave the search open."""


class HookList(SearchHooks):
    """Calls each hook in turn; a hook that raises is logged once and then skipped."""

    def __init__(self, hooks: list[SearchHooks]):
        self.hooks = list(hooks)
        self._broken: set[int] = set()

    def _call(self, method: str, *args: Any) -> None:
        for i, hook in enumerate(self.hooks):
            if i in self._broken:
                continue
            try:
                getattr(hook, method)(*args)
            except Exception:  # noqa: BLE001 - observers must not break the search
                self._broken.add(i)
                log.warning(
                    "%s.%s failed and is disabled for the rest of this search:\n%s",
                    type(hook).__name__, method, traceback.format_exc(limit=3),
                )

    def on_search_begin(self, search):
        self._call("on_search_begin", search)

    def on_trial_begin(self, search, trial):
        self._call("on_trial_begin", search, trial)

    def on_epoch_end(self, search, trial, epoch, logs):
        self._call("on_epoch_end", search, trial, epoch, logs)

    def on_trial_end(self, search, trial, result):
        self._call("on_trial_end", search, trial, result)

    def on_trial_lost(self, search, trial_id):
        self._call("on_trial_lost", search, trial_id)

    def on_search_end(self, search, status):
        self._call("on_search_end", search, status)

    def on_search_pause(self, search):
        self._call("on_search_pause", search)
