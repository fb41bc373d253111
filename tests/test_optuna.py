"""Optuna behind the search: hp translation, pruning, shared storage, dead workers, Pareto fronts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras_tuner as kt
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from search import optuna_oracle, run
from search.declare import Search
from search.hooks import COMPLETED, PRUNED, TrialResult
from search.optuna_oracle import OptunaOracle, suggest
from search.pareto import front_table
from search.space import load_space

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "spaces" / "digits.py")
# Tiny trials: 1 epoch of 1 step at 32 px, the smallest MobileNet, no model logged to MLflow.
TINY = ["--smoke", "--quiet", "--no-ensemble", "--set", "steps_per_epoch=1", "--set", "backbone=MobileNetV3Small",
        "--set", "batch_size=16"]


def journal(path: Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def worker(space: str, runs: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "search.run", space, *TINY, "--runs-dir", str(runs), *args],
        cwd=runs.parent, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


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

    with pytest.raises(SearchError, match="is not a pruner"):
        optuna_oracle.make_pruner("medain", 10, {})
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(SearchError, match="pip install torch"):
            optuna_oracle.make_sampler("gp", 0, 10, {})


# Pruning, driven through the oracle and its Keras callback without training ------------
class _Model:
    stop_training = False


def run_fake_trial(oracle: OptunaOracle, curve: list[float]) -> TrialResult:
    trial = oracle.create_trial("tuner0")
    callback = oracle.keras_callbacks(trial.trial_id)[0]
    callback.set_model(_Model())
    history: list[float] = []
    for epoch, value in enumerate(curve):
        history.append(value)
        callback.on_epoch_end(epoch, {"val_accuracy": value})
        if callback.model.stop_training:
            break
    result = TrialResult(status=oracle.trial_status(trial.trial_id) or COMPLETED, history={"val_accuracy": history},
                         epochs_run=len(history), seconds=1.0, best={"val_accuracy": max(history)})
    oracle.record_result(trial.trial_id, result)
    oracle.update_trial(trial.trial_id, result.best)
    trial.status = kt.engine.trial.TrialStatus.COMPLETED
    oracle.end_trial(trial)
    return result


def test_median_pruner_stops_the_clearly_worse_trials(tmp_path):
    search = Search(algorithm="tpe", max_trials=8, epochs=6, options={"pruner": "median"})
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle._set_project_dir(str(tmp_path / "fake"), oracle.tuner_project)
    good = [0.5, 0.6, 0.7, 0.75, 0.8, 0.82]
    bad = [0.1, 0.1, 0.11, 0.11, 0.12, 0.12]
    results = [run_fake_trial(oracle, curve) for curve in [good, good, good, bad, good, bad, bad, good]]
    statuses = [r.status for r in results]
    assert statuses == [COMPLETED, COMPLETED, COMPLETED, PRUNED, COMPLETED, PRUNED, PRUNED, COMPLETED]
    # Stopped right after the warm-up steps: the epochs they used are recorded.
    assert [r.epochs_run for r in results if r.status == PRUNED] == [3, 3, 3]
    states = [t.state for t in oracle.study.get_trials()]
    assert states.count(TrialState.PRUNED) == 3 and states.count(TrialState.COMPLETE) == 5
    assert (tmp_path / "fake" / "optuna.journal").is_file()


# Dead workers -----------------------------------------------------------------------------
def test_a_trial_whose_worker_stopped_beating_is_failed_and_queued_again(tmp_path):
    search = Search(algorithm="tpe", max_trials=3, options={"heartbeat_interval": 1, "grace_period": 5})
    oracle = OptunaOracle(search, 0, objective=kt.Objective("val_accuracy", "max"))
    oracle._set_project_dir(str(tmp_path / "fake"), oracle.tuner_project)
    study = oracle.study
    silent, alive = study.ask(), study.ask()
    for trial, beat in ((silent, time.time() - 60), (alive, time.time())):
        trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        trial.set_user_attr("worker", "another-machine:4242:cafe")
        trial.set_user_attr("heartbeat", beat)
    oracle._fail_stale()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[2].user_attrs["retry_of"] == silent.number
    # The retry is the next trial handed out, with the same values; the failed one uses no budget.
    oracle.hyperparameters.Float("learning_rate", 1e-4, 1e-2, sampling="log")
    trial = oracle.create_trial("tuner0")
    assert trial.trial_id == "0002" and trial.hyperparameters.values == silent.params
    assert [t.number for t in optuna_oracle._counted(study.get_trials())] == [1, 2]


# Real searches on digits ----------------------------------------------------------------
def test_tpe_smoke_search_records_its_trials_in_the_journal(tmp_path):
    outcome = run.run_search(load_space(DIGITS, smoke=True, algorithm="tpe", sets={"steps_per_epoch": "1"}),
                             runs_dir=tmp_path, verbose=0)
    assert outcome.status == COMPLETED
    assert sorted(outcome.table["trial_id"].astype(str).str.zfill(4)) == ["0000", "0001"]
    study = optuna.load_study(study_name="digits", storage=journal(tmp_path / "digits" / "optuna.journal"))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {t.user_attrs["kt_trial_id"] for t in trials} == {"0000", "0001"}
    for t in trials:
        record = json.loads((tmp_path / "digits" / "trials" / t.user_attrs["kt_trial_id"] / "result.json").read_text())
        assert t.value == pytest.approx(record["best"]["val_accuracy"])
        assert t.params["backbone"] == record["config"]["backbone"]
    # Re-running the finished search asks for nothing more.
    again = run.run_search(load_space(DIGITS, smoke=True, algorithm="tpe", sets={"steps_per_epoch": "1"}),
                           runs_dir=tmp_path, verbose=0)
    assert again.status == COMPLETED and len(study.get_trials()) == 2


def test_multi_objective_smoke_search_writes_pareto_table_and_plot(tmp_path):
    space = load_space(DIGITS, smoke=True, algorithm="nsga2",
                       sets={"steps_per_epoch": "1", "minimize": "'latency_ms'"})
    outcome = run.run_search(space, runs_dir=tmp_path, verbose=0)
    assert outcome.status == COMPLETED
    space_dir = tmp_path / "digits"
    front = pd.read_csv(space_dir / "pareto.csv")
    assert len(front) >= 1 and {"trial_id", "backbone", "val_accuracy", "latency_ms"} <= set(front.columns)
    assert (front["latency_ms"] > 0).all()
    assert (space_dir / "pareto.png").stat().st_size > 1000
    study = optuna.load_study(study_name="digits", storage=journal(space_dir / "optuna.journal"))
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in study.best_trials)


def test_front_table_keeps_only_undominated_trials():
    def record(trial_id: str, accuracy: float, size: float) -> dict:
        return {"trial_id": trial_id, "status": COMPLETED, "best": {"val_accuracy": accuracy}, "size_mb": size,
                "config": {"backbone": "MobileNet"}, "epochs_run": 1}

    table = front_table([record("a", 0.9, 10), record("b", 0.8, 2), record("c", 0.7, 5), record("d", 0.9, 12)],
                        "val_accuracy", "size_mb")
    assert table[table["on_front"]]["trial_id"].tolist() == ["b", "a"]


# Many workers ---------------------------------------------------------------------------
@pytest.mark.slow
def test_three_workers_share_one_study_and_survive_a_killed_one(tmp_path):
    """3 workers, 12 trials, one journal; one extra worker is SIGKILLed mid-trial (its pid is gone: failed
    and queued again at once; the heartbeat path is tested above)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (tmp_path / "mlflow.yaml").write_text("enabled: true\nlog_models: none\nflush_seconds: 60\n")
    storage = str(tmp_path / "study.journal")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = ["--algorithm", "tpe", "--max-trials", "12", "--storage", storage,
            "--set", "options={'heartbeat_interval': 2, 'grace_period': 60}"]  # a loaded CI machine beats late
    victim = worker(DIGITS, runs, *args, env=env)
    deadline = time.monotonic() + 300
    study = None
    while time.monotonic() < deadline:  # kill it once it is inside its first trial
        if Path(storage).exists():
            study = optuna.load_study(study_name="digits", storage=journal(Path(storage)))
            if study.get_trials(states=(TrialState.RUNNING,)):
                break
        time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert study is not None
    workers = [worker(DIGITS, runs, *args, env=env) for _ in range(3)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)

    trials = study.get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 12 and len({t.number for t in done}) == 12
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and any(t.user_attrs.get("retry_of") == killed[0].number for t in done)

    table = pd.read_csv(runs / "digits" / "trials.csv")
    assert len(table) == 12 and table["trial_id"].nunique() == 12
    assert set(table["trial_id"]) == {int(t.user_attrs["kt_trial_id"]) for t in done}

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("transfer-search/digits")
    runs_logged = client.search_runs([experiment.experiment_id], "tags.trial_id != ''", max_results=1000)
    finished = [r.data.tags["trial_id"] for r in runs_logged if r.info.status == "FINISHED"]
    assert len(finished) == 12 and len(set(finished)) == 12
