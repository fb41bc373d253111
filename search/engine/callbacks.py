"""The Keras callbacks the search loop adds to a trial's training: hooks, pruning, the budget."""

from __future__ import annotations

import time
from typing import Any

import keras

from search.core.hooks import HookList, SearchInfo, TrialInfo
from search.engine import interrupts
from search.engine.budget import Budget
from search.engine.source import TrialSource
from search.runs import faults


class EpochHook(keras.callbacks.Callback):
    """Tells the hooks each epoch's metrics; where a signal stops the trial."""

    def __init__(self, hooks: HookList, search: SearchInfo, trial: TrialInfo):
        super().__init__()
        self.hooks, self.search, self.trial = hooks, search, trial

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.hooks.on_epoch_end(self.search, self.trial, epoch, logs)
        faults.point("epoch-end")
        interrupts.check()


class Interruptible(keras.callbacks.Callback):
    """Where a signal deferred during a trial (`interrupts.deferred`) stops it: each batch's end."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        interrupts.check()

    def on_test_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        interrupts.check()

    def on_predict_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        interrupts.check()


class Deadline(keras.callbacks.Callback):
    """Stops training at the budget's deadline, after the batch in progress; times the first epoch."""

    def __init__(self, budget: Budget, trial_id: str):
        super().__init__()
        self.budget, self.trial_id = budget, trial_id
        self._began = time.monotonic()
        self._epochs = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.budget.over():
            self.model.stop_training = True
            self.budget.stopped_trial = self.trial_id

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs += 1
        if self._epochs == 1:
            self.budget.first_epochs.append(time.monotonic() - self._began)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.budget.training += time.monotonic() - self._began


class Report(keras.callbacks.Callback):
    """Reports each epoch to the source; stops training when the source prunes the trial."""

    def __init__(self, source: TrialSource, trial_id: str, pruned: set[str]):
        super().__init__()
        self.source, self.trial_id, self.pruned = source, trial_id, pruned

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.source.report(self.trial_id, epoch, dict(logs or {})):
            self.pruned.add(self.trial_id)
            self.model.stop_training = True
