"""Keras Tuner's oracles (random, grid, bayesian, hyperband) as a `TrialSource`.

The oracle keeps which values to try and what finished, in the runs folder's `tuner/`;
Hyperband's brackets and epoch budgets come with each trial's values (`tuner/epochs`,
`tuner/initial_epoch`, `tuner/trial_id`), which `Asked` carries to the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_tuner as kt

from search import compat
from search.core.hooks import TrialResult
from search.core.status import ENDED, FAILED, SCORED
from search.declare import Search
from search.engine import oracles
from search.engine.source import TUNER_ID, Asked, TooManyFailures

_STATUS = kt.engine.trial.TrialStatus


class KerasTunerSource:
    project = "tuner"
    storage: str | None = None

    def __init__(self, search: Search, seed: int):
        self.search = search
        self.oracle: kt.Oracle = oracles.make_oracle(search, seed)
        self._running: dict[str, kt.engine.trial.Trial] = {}

    def open(self, directory: Path) -> None:
        pass  # the oracle's state is read by the tuner built on it

    def connect(self, on_recovered: Callable[[dict[str, Any]], None], on_lost: Callable[[str], None]) -> None:
        pass  # one process: no other worker's trials to recover or lose

    def restore(self, records: list[dict[str, Any]]) -> int:
        known = set(self.oracle.trials)
        count = 0
        for record in records:
            if record["status"] not in ENDED or record["trial_id"] in known:
                continue
            hyperparameters = self.oracle.hyperparameters.copy()
            hyperparameters.values = dict(record.get("values") or {})
            trial = kt.engine.trial.Trial(hyperparameters, trial_id=record["trial_id"], status=_STATUS.RUNNING)
            self.oracle.trials[trial.trial_id] = trial
            try:
                self._end(trial, record["status"], record.get("best") or {}, record.get("error"))
            except TooManyFailures:
                pass  # consecutive failures among the restored ones
            count += 1
        return count

    def pending(self) -> list[str]:
        return compat.requeued_trials(self.oracle)

    def tell_recorded(self, trial_id: str, record: dict[str, Any]) -> None:
        assert record["status"] in ENDED
        compat.drop_requeued(self.oracle, trial_id)
        trial = self.oracle.trials[trial_id]
        self.oracle.ongoing_trials = {k: v for k, v in self.oracle.ongoing_trials.items() if v.trial_id != trial_id}
        self._end(trial, record["status"], record.get("best") or {}, record.get("error"))

    def ask(self) -> Asked | None:
        while True:
            trial = self.oracle.create_trial(TUNER_ID)
            if trial.status == _STATUS.STOPPED:
                return None
            if trial.status != _STATUS.IDLE:
                break
            time.sleep(0.1)  # Hyperband waits for a bracket's trials (never with one process)
        self._running[trial.trial_id] = trial
        values = trial.hyperparameters.values
        return Asked(
            trial_id=trial.trial_id, number=sorted(self.oracle.trials).index(trial.trial_id) + 1,
            hyperparameters=trial.hyperparameters, epochs=int(values.get("tuner/epochs", self.search.epochs)),
            initial_epoch=int(values.get("tuner/initial_epoch", 0)), resume_from=values.get("tuner/trial_id"),
        )

    def report(self, trial_id: str, epoch: int, logs: dict[str, float]) -> bool:
        return False  # Keras Tuner's algorithms stop no trial early (Hyperband's budgets are set up front)

    def tell(self, trial_id: str, result: TrialResult) -> None:
        self._end(self._running.pop(trial_id), result.status, result.best, result.error)

    def _end(self, trial: kt.engine.trial.Trial, status: str, best: dict[str, Any], error: str | None) -> None:
        scores = {k: v for k, v in best.items() if v is not None}
        if status in SCORED and self.oracle.objective.name in scores:
            self.oracle.update_trial(trial.trial_id, scores)
            trial.status = _STATUS.COMPLETED
        else:
            assert status == FAILED or status in SCORED
            trial.status = _STATUS.FAILED
            trial.message = error
        try:
            self.oracle.end_trial(trial)
        except RuntimeError as e:  # Keras Tuner's "consecutive failures"
            raise TooManyFailures(str(e)) from None

    def finished(self) -> int:
        done = (_STATUS.COMPLETED, _STATUS.FAILED)
        return sum(1 for t in self.oracle.trials.values() if t.status in done)

    def completed(self) -> int:
        return 0

    def close(self) -> None:
        pass
