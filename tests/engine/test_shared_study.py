"""Workers of one study asking for trials at the same instant."""

from __future__ import annotations

import keras_tuner as kt

from search.declare import Search
from search.engine.optuna_oracle import OptunaOracle


def _oracle(folder) -> OptunaOracle:  # noqa: ANN001 - a path
    oracle = OptunaOracle(Search(algorithm="tpe", max_trials=4), 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(folder)
    oracle.hyperparameters.Float("learning_rate", 1e-5, 1e-1, sampling="log")
    oracle.hyperparameters.Int("units", 8, 512)
    return oracle


def test_workers_asking_at_once_get_different_values(tmp_path):
    first, second = _oracle(tmp_path / "s"), _oracle(tmp_path / "s")  # one journal, two workers
    ask = second.study.ask
    got = {}

    def ask_after_the_other() -> object:
        # `second` has looked at the study (no trial yet) when `first` asks and takes trial 0.
        got["first"] = first.create_trial("w1")
        return ask()

    second.study.ask = ask_after_the_other
    got["second"] = second.create_trial("w2")
    assert (got["first"].trial_id, got["second"].trial_id) == ("0000", "0001")
    assert got["first"].hyperparameters.values != got["second"].hyperparameters.values
    first.stop_heartbeat()
    second.stop_heartbeat()
