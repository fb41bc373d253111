"""Optuna behind the search: hp translation, pruning, shared storage, dead workers, Pareto fronts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras_tuner as kt
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import TINY

from search.declare import Search
from search.engine import optuna_oracle, reaper
from search.core.hooks import TrialResult
from search.core.status import COMPLETED, PRUNED
from search.engine.optuna_oracle import OptunaOracle, suggest
from search.engine.optuna_source import OptunaSource
from search.engine.runner import run_search
from search.results.pareto import front_table
from search.space import load_space


def journal(path: Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


# Translation ----------------------------------------------------------------------------
def space() -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hp.Choice("backbone", ["MobileNet", "ResNet50"])
    hp.Int("head_width", 128, 8192, sampling="log")
    hp.Int("head_layers", 1, 3)
    hp.Float("learning_rate", 1e-5, 1e-3, sampling="log")
    hp.Float("dropout", 0.2, 0.5, step=0.1)
    hp.Boolean("head_batchnorm")
    hp.Fixed("augmentation", "faces")
    hp.Int("fine_tune_layers", 10, 40, step=10, parent_name="backbone", parent_values=["ResNet50"])
    return hp


def test_kt_space_becomes_optuna_distributions():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(30):
        trial = study.ask()
        values = suggest(trial, space())
        study.tell(trial, 0.0)
        seen.append((values, trial.distributions))
    for values, distributions in seen:
        assert values["augmentation"] == "faces" and "augmentation" not in distributions  # Fixed: no suggestion
        assert distributions["head_width"] == optuna.distributions.IntDistribution(128, 8192, log=True)
        assert distributions["learning_rate"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
        assert distributions["dropout"] == optuna.distributions.FloatDistribution(0.2, 0.5, step=0.1)
        assert distributions["head_batchnorm"] == optuna.distributions.CategoricalDistribution([True, False])
        assert values["dropout"] in (0.2, 0.3, 0.4, 0.5)
        # Conditional: suggested only when its parent has the value it depends on.
        assert ("fine_tune_layers" in values) == (values["backbone"] == "ResNet50")
        assert ("fine_tune_layers" in distributions) == (values["backbone"] == "ResNet50")
    assert {v["backbone"] for v, _ in seen} == {"MobileNet", "ResNet50"}
    assert {v["fine_tune_layers"] for v, _ in seen if "fine_tune_layers" in v} <= {10, 20, 30, 40}


def test_log_int_with_step_is_keras_tuners_geometric_grid():
    hp = kt.HyperParameters()
    hp.Int("units", 32, 512, step=2, sampling="log")
    trial = optuna.create_study().ask()
    suggest(trial, hp)
    assert trial.distributions["units"] == optuna.distributions.CategoricalDistribution([32, 64, 128, 256, 512])


def test_unknown_pruner_and_gp_without_torch_are_clear_errors():
    from search.errors import SearchError

    with pytest.raises(SearchError, match="is not a pruner. Did you mean 'median'"):
        Search(algorithm="tpe", options={"pruner": "medain"})
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(SearchError, match="pip install torch"):
            optuna_oracle.make_sampler("gp", 0, 10, {})


# Pruning, driven through the Optuna source as the search loop drives it, without training --
def run_fake_trial(source: OptunaSource, curve: list[float]) -> TrialResult:
    asked = source.ask()
    assert asked is not None
    history: list[float] = []
    pruned = False
    for epoch, value in enumerate(curve):
        history.append(value)
        if source.report(asked.trial_id, epoch, {"val_accuracy": value}):
            pruned = True
            break
    result = TrialResult(status=PRUNED if pruned else COMPLETED, history={"val_accuracy": history},
                         epochs_run=len(history), seconds=1.0, best={"val_accuracy": max(history)})
    source.tell(asked.trial_id, result)
    return result


def test_median_pruner_stops_the_clearly_worse_trials(tmp_path):
    search = Search(algorithm="tpe", max_trials=8, epochs=6, options={"pruner": "median"})
    source = OptunaSource(search, 0)
    oracle = source.oracle
    oracle.open(tmp_path / "fake")
    good = [0.5, 0.6, 0.7, 0.75, 0.8, 0.82]
    bad = [0.1, 0.1, 0.11, 0.11, 0.12, 0.12]
    results = [run_fake_trial(source, curve) for curve in [good, good, good, bad, good, bad, bad, good]]
    statuses = [r.status for r in results]
    assert statuses == [COMPLETED, COMPLETED, COMPLETED, PRUNED, COMPLETED, PRUNED, PRUNED, COMPLETED]
    # Stopped right after the warm-up steps: the epochs they used are recorded.
    assert [r.epochs_run for r in results if r.status == PRUNED] == [3, 3, 3]
    states = [t.state for t in oracle.study.get_trials()]
    assert states.count(TrialState.PRUNED) == 3 and states.count(TrialState.COMPLETE) == 5
    assert (tmp_path / "fake" / "optuna.journal").is_file()
    assert source.ask() is None and source.finished() == 8
    source.close()


# Dead workers -----------------------------------------------------------------------------
def _foreign(trial: optuna.Trial, beat: float) -> None:
    trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    trial.set_user_attr("worker", {"host": "another-machine", "pid": 4242, "started": "1", "namespace": "elsewhere",
                                   "token": "cafe"})
    trial.set_user_attr("heartbeat", beat)


def test_a_trial_whose_worker_stopped_beating_is_failed_and_queued_again(tmp_path):
    search = Search(algorithm="tpe", max_trials=3, options={"heartbeat_interval": 1, "grace_period": 5})
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(tmp_path / "fake")
    study = oracle.study
    silent, alive = study.ask(), study.ask()
    _foreign(silent, time.time() - 60)
    _foreign(alive, time.time())
    oracle.reap()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[2]) == silent.number
    # The retry is the next trial handed out, with the same values; the failed one uses no budget.
    oracle.hyperparameters.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    trial = oracle.create_trial("tuner0")
    assert trial.trial_id == "0002" and trial.hyperparameters.values == silent.params
    assert [t.number for t in optuna_oracle.counted(study.get_trials())] == [1, 2]
    oracle.stop_heartbeat()


def test_a_silent_trial_on_a_sqlite_storage_is_failed_and_queued_again(tmp_path):
    search = Search(algorithm="tpe", max_trials=3, options={
        "storage": f"sqlite:///{tmp_path}/study.db", "heartbeat_interval": 1, "grace_period": 2})
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(tmp_path / "fake")
    study = oracle.study
    silent = study.ask()
    _foreign(silent, time.time())
    study._storage.record_heartbeat(silent._trial_id)
    time.sleep(3.2)  # past the grace period, at SQLite CURRENT_TIMESTAMP's one-second resolution
    alive = study.ask()
    _foreign(alive, time.time())
    study._storage.record_heartbeat(alive._trial_id)
    oracle.reap()
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    oracle.stop_heartbeat()


def test_a_dead_workers_trial_failed_by_a_worker_that_died_too_is_queued_once_by_the_next(tmp_path):
    """Failing a dead worker's trial and queueing it again are two writes; a reaper killed
    between them left a FAIL that used up the budget. The next reap queues it, once however many
    workers reap, and never a trial that failed on its own or a retry that inherited the mark."""
    search = Search(algorithm="tpe", max_trials=4, options={"heartbeat_interval": 1, "grace_period": 5})

    def oracle_of(folder: str) -> OptunaOracle:
        made = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
        made.open(tmp_path / folder)
        return made

    first = oracle_of("fake")
    study = first.study
    dead, broken = study.ask(), study.ask()
    _foreign(dead, time.time() - 60)
    _foreign(broken, time.time())
    # What a reaper killed after its tell did: marked and failed, no retry queued.
    optuna_oracle.compat.set_user_attr(study, dead, optuna_oracle.LOST, {"trial": dead.number, "why": "gone"})
    study.tell(dead.number, state=TrialState.FAIL)
    study.tell(broken.number, state=TrialState.FAIL)  # failed on its own: it counts, as any failure
    others = [oracle_of("fake") for _ in range(2)]
    for oracle in (first, *others):
        oracle.reap()
    trials = study.get_trials()
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING and retries[0].params == dead.params
    assert not [t for t in trials if t.system_attrs.get("failed_trial") == broken.number]
    # The retry inherits the mark (Optuna copies user attributes); failing on its own, it is not queued.
    assert retries[0].user_attrs[optuna_oracle.LOST]["trial"] == dead.number
    taken = study.ask()  # a worker takes the retry, and it fails in training
    assert taken.number == retries[0].number
    study.tell(taken.number, state=TrialState.FAIL)
    first.reap()
    assert len(study.get_trials()) == 3
    for oracle in (first, *others):
        oracle.stop_heartbeat()


def test_a_trial_whose_worker_died_before_saying_who_it_is_is_queued_again_by_its_age(tmp_path):
    """A worker killed between asking for a trial and recording itself on it (or its first
    beat) left a RUNNING trial that no heartbeat would ever make stale: the last worker
    waited for it for ever. Its age now stands in for the missing heartbeat."""
    search = Search(algorithm="tpe", max_trials=3, options={"heartbeat_interval": 1, "grace_period": 1})
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(tmp_path / "fake")
    study = oracle.study
    nameless, silent = study.ask(), study.ask()
    silent.set_user_attr("worker", {"host": "another-machine", "pid": 4242, "started": "1",
                                    "namespace": "elsewhere", "token": "cafe"})
    oracle.reap()
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]  # not yet
    time.sleep(1.2)
    oracle.reap()
    trials = study.get_trials()
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    assert sorted(t.system_attrs["failed_trial"] for t in trials[2:]) == [nameless.number, silent.number]
    assert all(t.state == TrialState.WAITING for t in trials[2:])
    oracle.stop_heartbeat()


def test_an_ask_cut_after_its_trial_was_created_leaves_an_orphan_that_is_queued_again_and_counted_once(
        tmp_path, monkeypatch):
    """The database answers no more after creating an asked trial: the worker's retry asks a
    new one, and the first is no one's. It is failed by its age and queued again; the retry
    carries its mark (Optuna copies user attributes) yet is a trial of its own, counted once."""
    import sqlalchemy

    from search.engine import optuna_storage

    monkeypatch.setattr(optuna_storage, "_nap", lambda seconds: None)
    search = Search(algorithm="tpe", max_trials=2, options={"heartbeat_interval": 1, "grace_period": 1})
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(tmp_path / "fake")
    oracle.hyperparameters.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    storage = oracle.study._storage
    create = storage.create_new_trial
    cut = []

    def created_then_cut(*args, **kwargs):
        trial_id = create(*args, **kwargs)
        if not cut:
            cut.append(trial_id)
            raise sqlalchemy.exc.OperationalError("SELECT ...", {}, Exception("server closed the connection"))
        return trial_id

    monkeypatch.setattr(storage, "create_new_trial", created_then_cut)
    first = oracle.create_trial("tuner0")
    assert cut and first.trial_id == "0001"
    orphan = oracle.study.get_trials()[0]
    assert orphan.state == TrialState.RUNNING and "worker" not in orphan.user_attrs
    oracle.end_trial(first)
    time.sleep(1.2)
    second = oracle.create_trial("tuner0")  # reaps the orphan, then takes its retry
    trials = oracle.study.get_trials()
    assert trials[0].state == TrialState.FAIL and optuna_oracle.lost(trials[0])
    assert second.trial_id == "0002" and trials[2].system_attrs["failed_trial"] == 0
    assert optuna_oracle.LOST in trials[2].user_attrs and optuna_oracle.lost(trials[2]) is None
    assert [t.number for t in optuna_oracle.counted(trials)] == [1, 2]
    oracle.stop_heartbeat()


def test_a_live_worker_is_never_failed_however_late_its_heartbeat(tmp_path):
    from search.liveness import workers

    search = Search(algorithm="tpe", max_trials=3, options={"heartbeat_interval": 1, "grace_period": 2})
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(tmp_path / "fake")
    late = oracle.study.ask()
    late.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    # The parent of this test is alive, on this machine: its heartbeat an hour old means nothing.
    parent = workers.Worker(workers.this_worker().host, __import__("os").getppid(),
                            workers._started(__import__("os").getppid()), workers.this_worker().namespace, "x")
    late.set_user_attr("worker", parent.record())
    late.set_user_attr("heartbeat", time.time() - 3600)
    oracle.reap()
    assert [t.state for t in oracle.study.get_trials()] == [TrialState.RUNNING]


def test_a_trial_recorded_before_its_worker_died_is_told_its_result_not_run_again(tmp_path):
    search = Search(algorithm="tpe", max_trials=2)
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(tmp_path / "fake")
    dead = oracle.study.ask()
    _foreign(dead, time.time() - 3600)
    record = tmp_path / "fake" / "trials" / "0000" / "result.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"trial_id": "0000", "status": COMPLETED, "best": {"val_accuracy": 0.75}}))
    dead.set_user_attr("kt_trial_id", "0000")
    oracle.reap()
    (told,) = oracle.study.get_trials()
    assert told.state == TrialState.COMPLETE and told.value == 0.75
    assert oracle.recovered == [0]


def test_a_recorded_trial_told_by_its_own_worker_as_it_is_reaped_is_counted_once(tmp_path, monkeypatch):
    """A worker writes its record a moment before it tells the study: a worker that reaps the
    trial in between, and whose tell comes second, leaves it to the first and goes on."""
    search = Search(algorithm="tpe", max_trials=2)
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle.open(tmp_path / "fake")
    slow = oracle.study.ask()
    _foreign(slow, time.time() - 3600)  # on another machine, its heartbeat late: only the record says it ended
    record = tmp_path / "fake" / "trials" / "0000" / "result.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"trial_id": "0000", "status": COMPLETED, "best": {"val_accuracy": 0.75}}))
    slow.set_user_attr("kt_trial_id", "0000")
    own_worker = optuna.load_study(study_name=oracle.study.study_name, storage=journal(tmp_path / "fake" / "optuna.journal"))
    real_tell = reaper.tell

    def told_first(study, number, values=None, state=None):
        own_worker.tell(number, [0.75])  # the trial's own worker tells it between the reaper's read and tell
        return real_tell(study, number, values, state)

    monkeypatch.setattr(reaper, "tell", told_first)
    oracle.reap()
    (told,) = oracle.study.get_trials()
    assert told.state == TrialState.COMPLETE and told.value == 0.75
    assert oracle.recovered == []  # its own worker accounts for it
    monkeypatch.setattr(reaper, "tell", real_tell)
    oracle.reap()
    assert len(oracle.study.get_trials()) == 1 and oracle.recovered == []



def test_a_tell_of_a_trial_another_process_ended_says_so_in_one_error(tmp_path):
    """Optuna raises ValueError or UpdateFinishedTrialError as its copy of the study is fresh or
    not; every caller of `tell` (a worker's own end, a reaper) is handed the second."""
    from search.engine.optuna_storage import tell

    study = optuna.create_study(study_name="s", storage=journal(tmp_path / "j"))
    other = optuna.load_study(study_name="s", storage=journal(tmp_path / "j"))
    for fresh in (True, False):
        trial = study.ask()
        if fresh:
            study.get_trials()  # this copy reads the end before it tells
        other.tell(trial.number, [0.5])
        if fresh:
            study.get_trials()
        with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match=f"trial {trial.number} was ended"):
            tell(study, trial.number, [0.7])
    with pytest.raises(Exception) as raised:  # a mistake of the caller's own is not taken for another's end
        tell(study, 99, [0.1])
    assert not isinstance(raised.value, optuna.exceptions.UpdateFinishedTrialError), raised.value

# Real searches on digits ----------------------------------------------------------------
def test_tpe_search_records_its_trials_in_the_journal(tmp_path, digits_folders):
    def space():
        return load_space(TINY, data_path=str(digits_folders), algorithm="tpe", max_trials=2)

    outcome = run_search(space(), runs_dir=tmp_path, verbose=0, tracking=False)
    assert outcome.status == COMPLETED
    assert sorted(outcome.table["trial_id"].astype(str).str.zfill(4)) == ["0000", "0001"]
    study = optuna.load_study(study_name="tiny", storage=journal(tmp_path / "tiny" / "optuna.journal"))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {t.user_attrs["kt_trial_id"] for t in trials} == {"0000", "0001"}
    for t in trials:
        record = json.loads((tmp_path / "tiny" / "trials" / t.user_attrs["kt_trial_id"] / "result.json").read_text())
        assert t.value == pytest.approx(record["best"]["val_accuracy"])
        assert t.params["units"] == record["values"]["units"]
    assert study.metric_names == ["val_accuracy"]  # what optuna-dashboard shows
    # Re-running the finished search asks for nothing more.
    again = run_search(space(), runs_dir=tmp_path, verbose=0, tracking=False)
    assert again.status == COMPLETED and len(study.get_trials()) == 2


def test_keep_models_best_keeps_no_pruned_trials_model(tmp_path, digits_folders, monkeypatch):
    real_report = OptunaSource.report
    monkeypatch.setattr(OptunaSource, "report", lambda self, trial_id, epoch, logs:
                        real_report(self, trial_id, epoch, logs) or trial_id == "0001")  # the second trial is pruned
    space = load_space(TINY, data_path=str(digits_folders), algorithm="tpe", max_trials=2,
                       sets={"keep_models": "'best'"})
    outcome = run_search(space, runs_dir=tmp_path, verbose=0, tracking=False)
    table = outcome.table.assign(trial_id=outcome.table["trial_id"].astype(str).str.zfill(4)).set_index("trial_id")
    assert table.loc["0001", "status"] == PRUNED
    assert not (tmp_path / "tiny" / "trials" / "0001" / "model.keras").exists()
    assert (tmp_path / "tiny" / "trials" / "0000" / "model.keras").is_file()  # the best one


def test_keep_models_best_is_refused_with_hyperband_in_one_line():
    from search.errors import SpaceError

    with pytest.raises(SpaceError, match="keep_models='best'.*hyperband.*use keep_models='all'"):
        Search(algorithm="hyperband", keep_models="best")


def test_multi_objective_search_writes_pareto_table_and_plot(tmp_path, digits_folders):
    space = load_space(TINY, data_path=str(digits_folders), algorithm="nsga2", max_trials=3,
                       sets={"minimize": "'latency_ms'"})
    outcome = run_search(space, runs_dir=tmp_path, verbose=0, tracking=False)
    assert outcome.status == COMPLETED
    space_dir = tmp_path / "tiny"
    front = pd.read_csv(space_dir / "pareto.csv")
    assert len(front) >= 1 and {"trial_id", "val_accuracy", "latency_ms"} <= set(front.columns)
    assert (front["latency_ms"] > 0).all()
    assert (space_dir / "pareto.png").stat().st_size > 1000
    study = optuna.load_study(study_name="tiny", storage=journal(space_dir / "optuna.journal"))
    assert study.metric_names == ["val_accuracy", "latency_ms"]
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in study.best_trials)


def test_front_table_keeps_only_undominated_trials():
    def record(trial_id: str, accuracy: float, size: float) -> dict:
        return {"trial_id": trial_id, "status": COMPLETED, "best": {"val_accuracy": accuracy}, "size_mb": size,
                "config": {"backbone": "MobileNet"}, "epochs_run": 1}

    table = front_table([record("a", 0.9, 10), record("b", 0.8, 2), record("c", 0.7, 5), record("d", 0.9, 12)],
                        "val_accuracy", "size_mb")
    assert table[table["on_front"]]["trial_id"].tolist() == ["b", "a"]


def test_only_a_lost_connection_is_retried_for_long(monkeypatch):
    """A restart's errors are retried; an IntegrityError or Optuna's refusal is a real answer, raised at once."""
    import sqlalchemy as sa

    from search.engine import optuna_storage

    monkeypatch.setattr(optuna_storage, "_nap", lambda seconds: None)
    lost = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = lost
    pending = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    pending.__cause__ = sa.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")
    for error, calls in [(lost, 12), (wrapped, 12), (sa.exc.InterfaceError("x", {}, Exception("closed")), 12),
                         (pending, 12),
                         (sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), 1),
                         (optuna.exceptions.StorageInternalError("no cause"), 1), (ValueError("bad value"), 1)]:
        tries = []

        def call(error=error, tries=tries):
            tries.append(1)
            if len(tries) < 12:
                raise error
            return "answered"

        if calls == 1:
            with pytest.raises(type(error)):
                optuna_storage.call_with_retries(call)
        else:
            assert optuna_storage.call_with_retries(call) == "answered"
        assert len(tries) == calls, error
