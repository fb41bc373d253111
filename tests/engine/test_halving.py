"""Search(fine_tune_best): the rung's decisions on records, and the settings it refuses."""

from __future__ import annotations

import json

import pytest

from search import run
from search.declare import Search
from search.engine.halving import RECORD, Rung, fine_tunes
from search.errors import SpaceError
from search.runs.layout import SpaceDir


def test_a_probe_fine_tunes_when_it_ranks_in_the_best_fraction_of_the_recorded_probes():
    decide = lambda score, others, fraction=0.25, least=4, objective="val_accuracy": fine_tunes(  # noqa: E731
        score, others, fraction=fraction, min_probes=least, objective=objective)
    assert decide(0.9, [0.1, 0.2]) == (False, 1, 3)  # the best, but fewer probes than the minimum
    assert decide(0.9, [0.1, 0.2, 0.3]) == (True, 1, 4)  # the best of 4: the best quarter holds one
    assert decide(0.25, [0.1, 0.2, 0.3]) == (False, 2, 4)
    assert decide(0.85, [0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 0.9]) == (True, 2, 8)  # the best quarter of 8: two
    assert decide(0.3, [0.3, 0.1, 0.2]) == (True, 1, 4)  # a tie ranks it first
    assert decide(0.2, [0.5, 0.9], fraction=1.0, least=1) == (True, 3, 3)  # fraction 1: every probe
    assert decide(0.2, [0.3, 0.5, 0.9], objective="val_loss") == (True, 1, 4)  # lower is better


def test_decisions_are_recorded_and_a_trial_run_again_follows_its_record(tmp_path):
    folder = SpaceDir(tmp_path / "space")
    rung = Rung(folder, Search(fine_tune_best=0.5, max_trials=8))  # from 2 probes on, the best half
    assert not rung.decide("0000", 0.5).fine_tune  # alone: below the minimum
    assert rung.decide("0001", 0.6).fine_tune
    assert not rung.decide("0002", 0.4).fine_tune
    record = json.loads((folder.trial("0001").path / RECORD).read_text())
    assert record["fine_tune"] is True and record["rank"] == 1 and record["probes"] == 2

    # Better probes recorded since (other workers) would rank 0001 out now; run again (its
    # process killed while it fine-tuned), it follows the decision on record.
    rung.decide("0003", 0.9)
    rung.decide("0004", 0.95)
    again = rung.decide("0001", 0.6)
    assert again.fine_tune and again.rank == 1 and again.probes == 2
    # An Optuna retry has a new id: it follows the trial it runs again, not counted against it.
    retry = rung.decide("0007", 0.6, earlier=("0001",))
    assert retry.fine_tune and retry.note == "fine-tuned: probe 1 of 2"
    assert set(rung.recorded()) == {"0000", "0001", "0002", "0003", "0004", "0007"}
    assert rung.decide("0005", 0.1).note == "probe only: probe 7 of 7, not in the best 50%"


@pytest.mark.parametrize("setting, message", [
    ({"fine_tune_best": 0}, "must be a fraction in (0, 1]"),
    ({"fine_tune_best": 1.5}, "must be a fraction in (0, 1]"),
    ({"fine_tune_best": True}, "must be a fraction in (0, 1]"),
    ({"min_probes": 3}, "applies with fine_tune_best only"),
    ({"fine_tune_best": 0.5, "min_probes": 0}, "must be a whole number >= 1"),
    ({"fine_tune_best": 0.1, "max_trials": 5}, "fine-tunes nothing before 10 probes"),
    ({"fine_tune_best": 0.5, "algorithm": "hyperband"}, "use another algorithm"),
    ({"fine_tune_best": 0.5, "minimize": "params"}, "does not take a second objective"),
    ({"fine_tune_best": 0.5, "folds": 3}, "does not combine with folds=3"),
])
def test_impossible_fine_tune_best_settings_are_refused_naming_the_setting(setting, message):
    with pytest.raises(SpaceError, match=r"Search\(") as refused:
        Search(**setting)
    assert message in str(refused.value)


SPACE = '''
from search import Data, Search

data = Data("builtin:digits")
search = Search(max_trials=4, epochs={epochs}, fine_tune_best=0.5)


def hyperparameters(hp):
    hp.Fixed("fine_tune", {fine_tune!r})
    hp.Fixed("probe_epochs", 2)
{own}'''
OWN_MODEL = '''

def build_model(hp, inputs, num_classes):
    import keras

    return keras.layers.Dense(num_classes, activation="softmax")(keras.layers.Flatten()(inputs))
'''


@pytest.mark.parametrize("epochs, fine_tune, own, message", [
    (3, "probe_then_all", OWN_MODEL, "builds its own model (build_model)"),
    (3, "frozen", "", "fine_tune takes 'frozen'"),
    (2, "probe_then_all", "", "probe_epochs can be 2, and epochs is 2"),
])
def test_a_space_fine_tune_best_cannot_rank_is_refused_in_one_line(tmp_path, capsys, epochs, fine_tune, own, message):
    space = tmp_path / "halving.py"
    space.write_text(SPACE.format(epochs=epochs, fine_tune=fine_tune, own=own))
    assert run.main([str(space), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs" / "halving").exists()


def test_optuna_is_told_a_probe_only_trial_as_pruned_and_a_retry_names_the_trial_it_runs_again(tmp_path):
    import time

    from optuna.trial import TrialState

    from search.core.hooks import TrialResult
    from search.core.status import COMPLETED, PRUNED
    from search.engine.optuna_source import OptunaSource

    search = Search(algorithm="tpe", max_trials=4, epochs=3, fine_tune_best=0.5,
                    options={"pruner": "none", "heartbeat_interval": 1, "grace_period": 5})
    source = OptunaSource(search, 0)
    source.oracle.open(tmp_path / "fake")
    source.oracle.hyperparameters.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    for status, curve in ((PRUNED, [0.5]), (COMPLETED, [0.6, 0.8, 0.9])):
        asked = source.ask()
        assert asked.runs_again == ()
        for epoch, value in enumerate(curve):
            assert not source.report(asked.trial_id, epoch, {"val_accuracy": value})
        source.tell(asked.trial_id, TrialResult(status=status, history={"val_accuracy": curve}, epochs_run=len(curve),
                                                seconds=1.0, best={"val_accuracy": max(curve)}))
    study = source.oracle.study
    # TPE ranks a pruned trial below every complete one: a probe is not a fine-tuned result.
    assert [t.state for t in study.get_trials()] == [TrialState.PRUNED, TrialState.COMPLETE]

    dead = study.ask()  # a worker on another machine that stopped beating
    dead.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    dead.set_user_attr("worker", {"host": "elsewhere", "pid": 4242, "started": "1", "namespace": "x", "token": "t"})
    dead.set_user_attr("heartbeat", time.time() - 60)
    retry = source.ask()  # its retry: it follows the probe decision of the trial it runs again
    assert retry.trial_id == "0003" and retry.runs_again == ("0002",)
    source.close()


def test_a_smoke_run_of_a_halving_space_drops_the_halving(tmp_path):
    from search.space import load_space

    space = tmp_path / "halving.py"
    space.write_text(SPACE.format(epochs=6, fine_tune="probe_then_all", own=""))
    assert load_space(space).search.fine_tune_best == 0.5
    smoke = load_space(space, smoke=True)  # 2 trials of 1 epoch: nothing to fine-tune, nothing to rank
    assert smoke.search.fine_tune_best is None and smoke.search.epochs == 1
