"""Optuna's heartbeat on PostgreSQL: a worker on another machine that dies is noticed after the
grace period, even one killed before its heartbeat process ever beat."""

from __future__ import annotations

import time

import keras_tuner as kt
import optuna
from optuna.trial import TrialState

from search import compat
from search.declare import Search
from search.liveness.heartbeat import Heartbeat
from search.engine.optuna_oracle import OptunaOracle

ELSEWHERE = {"host": "another-machine", "pid": 4242, "started": "1", "namespace": "elsewhere", "token": "cafe"}


def _oracle(url: str, folder) -> OptunaOracle:  # noqa: ANN001 - a path
    search = Search(algorithm="tpe", max_trials=2, options={"storage": url, "heartbeat_interval": 1,
                                                             "grace_period": 2})
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(folder)
    oracle.hyperparameters.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    return oracle


def test_a_worker_killed_before_its_heartbeat_process_beat_is_noticed(database, tmp_path, monkeypatch):
    url = database()
    with monkeypatch.context() as patched:
        patched.setattr(Heartbeat, "beat", lambda self, trial_ids: None)  # it never got to beat
        dying = _oracle(url, tmp_path / "a")
        trial = dying.create_trial("tuner0")
    storage = optuna.storages.RDBStorage(url)
    (frozen,) = storage.get_all_trials(storage.get_study_id_from_name("a"))
    storage.set_trial_user_attr(compat.trial_id(frozen), "worker", ELSEWHERE)  # only its heartbeat can tell
    time.sleep(3.5)
    other = _oracle(url, tmp_path / "a")
    other.reap()
    trials = other.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trial.hyperparameters.values
    other.stop_heartbeat()
