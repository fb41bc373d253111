"""An Optuna study as a `TrialSource`: its samplers, pruners, storages and heartbeat.

The study and the workers' liveness are `search.engine.optuna_oracle.OptunaOracle`'s; this
adapter turns its trials into `Asked` ones and tells it results. Trials of dead workers are
recovered from their records by the study itself when it hands out the next trial.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_tuner as kt

from search.core.hooks import TrialResult
from search.core.status import SCORED
from search.declare import Search
from search.engine import oracles
from search.engine.optuna_oracle import OptunaOracle
from search.engine.source import TUNER_ID, Asked, TooManyFailures

_STATUS = kt.engine.trial.TrialStatus


class OptunaSource:
    def __init__(self, search: Search, seed: int):
        self.search = search
        self.oracle = OptunaOracle(search, seed, **oracles.common(search))  # Optuna's samplers take seed 0 as it is
        self.project = self.oracle.tuner_project  # Keras Tuner's state per worker: the study is the shared one
        self._running: dict[str, kt.engine.trial.Trial] = {}

    @property
    def storage(self) -> str | None:
        return self.oracle.storage

    def open(self, directory: Path) -> None:
        self.oracle.open(directory)

    def connect(self, on_recovered: Callable[[dict[str, Any]], None], on_lost: Callable[[str], None]) -> None:
        self.oracle.on_recovered = on_recovered
        self.oracle.on_lost = on_lost

    def restore(self, records: list[dict[str, Any]]) -> int:
        return self.oracle.restore(records)

    def pending(self) -> list[str]:
        return []  # the study recovers its trials from their records as it hands out the next (`reap`)

    def tell_recorded(self, trial_id: str, record: dict[str, Any]) -> None:
        raise AssertionError(f"trial {trial_id} was never pending")

    def ask(self) -> Asked | None:
        trial = self.oracle.create_trial(TUNER_ID)
        if trial.status == _STATUS.STOPPED:
            return None
        self._running[trial.trial_id] = trial
        return Asked(trial_id=trial.trial_id, number=self.oracle.trial_number(trial.trial_id),
                     hyperparameters=trial.hyperparameters, epochs=self.search.epochs,
                     runs_again=self.oracle.runs_again(trial.trial_id))

    def report(self, trial_id: str, epoch: int, logs: dict[str, float]) -> bool:
        return self.oracle.report(trial_id, epoch, logs)

    def tell(self, trial_id: str, result: TrialResult) -> None:
        trial = self._running.pop(trial_id)
        self.oracle.record_result(trial_id, result)
        scores = {k: v for k, v in result.best.items() if v is not None}
        if result.status in SCORED and self.oracle.objective.name in scores:
            self.oracle.update_trial(trial_id, scores)  # Keras Tuner's bookkeeping of this worker's trials
            trial.status = _STATUS.COMPLETED
        else:
            trial.status = _STATUS.FAILED
            trial.message = result.error
        try:
            self.oracle.end_trial(trial)
        except RuntimeError as e:  # Keras Tuner's "consecutive failures"
            raise TooManyFailures(str(e)) from None

    def finished(self) -> int:
        return self.oracle.finished_count()

    def completed(self) -> int:
        return self.oracle.completed_count()

    def close(self) -> None:
        self.oracle.stop_heartbeat()
