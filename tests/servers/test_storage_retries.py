"""Every storage call of a worker survives the study's database going away for a moment:
asking, reading the study, reporting, telling. A lost connection is retried; a call whose
write was committed but whose answer was lost (an `ask` that created a trial, a `tell` that
ended one) neither crashes the worker nor counts twice."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from search.core.hooks import TrialResult
from search.core.status import COMPLETED
from search.declare import Search
from search.engine import optuna_storage
from search.engine.optuna_source import OptunaSource
from search.engine.reaper import counted, lost


def _lost_connection() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


class Flaky:
    """The first calls of some `RDBStorage` methods fail as a lost connection does: before
    they reach the database (`before`, how many), or after their write committed, the answer
    lost (`after`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, before: dict[str, int], after: dict[str, int]):
        self.failed: collections.Counter[str] = collections.Counter()
        for name in {*before, *after}:
            real = getattr(optuna.storages.RDBStorage, name)

            def flaky(storage, *args, _real=real, _name=name, **kwargs):
                if self.failed[f"{_name} before"] < before.get(_name, 0):
                    self.failed[f"{_name} before"] += 1
                    raise _lost_connection()
                answer = _real(storage, *args, **kwargs)
                if self.failed[f"{_name} after"] < after.get(_name, 0):
                    self.failed[f"{_name} after"] += 1
                    raise optuna.exceptions.StorageInternalError(
                        "An exception is raised during the commit.") from _lost_connection()
                return answer

            monkeypatch.setattr(optuna.storages.RDBStorage, name, flaky)


def test_a_lost_connection_is_retried_and_a_lost_answer_counts_once(database, tmp_path: Path, monkeypatch, capfd):
    monkeypatch.setattr(optuna_storage, "RECONNECT_FOR", 20.0, raising=False)
    url = database()
    search = Search(algorithm="tpe", max_trials=3, epochs=2,
                    options={"storage": url, "heartbeat_interval": 1, "grace_period": 2})
    source = OptunaSource(search, 0)
    source.oracle.open(tmp_path / "fake")
    flaky = Flaky(monkeypatch,
                  before={"_get_trials": 3, "set_trial_intermediate_value": 2, "set_trial_user_attr": 2,
                          "set_trial_state_values": 1},
                  after={"_create_new_trial": 1, "set_trial_state_values": 2})
    told = []
    started = time.monotonic()
    try:
        while (asked := source.ask()) is not None:
            assert time.monotonic() - started < 120, "the search does not end"
            for epoch in range(2):
                source.report(asked.trial_id, epoch, {"val_accuracy": 0.5 + epoch / 10})
            source.tell(asked.trial_id, TrialResult(status=COMPLETED, history={"val_accuracy": [0.5, 0.6]},
                                                    epochs_run=2, seconds=1.0, best={"val_accuracy": 0.6}))
            told.append(asked.trial_id)
    finally:
        source.close()
    assert set(flaky.failed) == {"_get_trials before", "set_trial_intermediate_value before",
                                 "set_trial_user_attr before", "set_trial_state_values before",
                                 "_create_new_trial after", "set_trial_state_values after"}, flaky.failed
    out = capfd.readouterr()
    assert "could not tell" not in out.out and "Traceback" not in out.err, out
    trials = optuna.load_study(study_name="fake", storage=url).trials
    states = collections.Counter(t.state.name for t in trials)
    assert len(told) == len(set(told)) == 3, told
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3, states
    assert not [t for t in trials if t.state == TrialState.RUNNING], states
    assert len([t for t in counted(trials) if t.state.is_finished()]) == 3, states
    # The trial the lost `ask` created, which no worker saw, was failed as an orphan and queued again.
    assert [t.state for t in trials if lost(t)] == [TrialState.FAIL], states
    assert all(t.intermediate_values == {1: 0.5, 2: 0.6} for t in trials if t.state == TrialState.COMPLETE)
