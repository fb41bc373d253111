"""MLflow tracking against a real SQLite store, read back with MlflowClient."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tracking_fakes import result, search_info, trial

from search import run, tracking
from search.errors import SearchError
from search.hooks import COMPLETED, FAILED, KILLED, PRUNED
from search.tracking_config import TrackingConfig, load_config

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
RUN_STATUS = {0: "FINISHED", 1: "FAILED", 130: "KILLED"}


def runs_of(client: MlflowClient) -> tuple[list, list]:
    """(search runs, trial runs) in the store, oldest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    every = client.search_runs(experiments, order_by=["attributes.start_time ASC"])
    return ([r for r in every if "mlflow.parentRunId" not in r.data.tags and "space_sha256" in r.data.tags],
            [r for r in every if "mlflow.parentRunId" in r.data.tags])


def smoke(runs_dir: Path, data: Path, *extra: str) -> int:
    return run.main(["spaces/digits.py", "--smoke", "--quiet", "--no-ensemble", "--data", str(data),
                     "--runs-dir", str(runs_dir), *extra])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/store/mlflow.db")
        yield root, MlflowClient(f"sqlite:///{root}/store/mlflow.db"), mp


@pytest.fixture(scope="module")
def first(store, digits_folders):
    root, client, _ = store
    code = smoke(root, digits_folders)
    parents, trials = runs_of(client)
    return code, parents, trials, root / "digits"


@pytest.fixture(scope="module")
def resumed(first, store, digits_folders):
    root, client, _ = store
    code = smoke(root, digits_folders, "--max-trials", "3")
    return code, *runs_of(client)


def test_one_parent_run_and_one_nested_run_per_trial(first):
    code, parents, trials, space_dir = first
    assert len(parents) == 1 and len(trials) == 2
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}
    assert parents[0].info.status == RUN_STATUS[code]
    assert json.loads((space_dir / "mlflow.json").read_text())["run_id"] == parents[0].info.run_id


def test_parent_run_identifies_the_search(first, store):
    _, parents, _, space_dir = first
    _, client, _ = store
    tags = parents[0].data.tags
    for name in ("space_sha256", "git_commit", "data.classes", "data.counts", "data.content_hash",
                 "version.mlflow", "version.keras", "strategy", "replicas", "search.max_trials"):
        assert tags.get(name), name
    assert tags["data.counts"].startswith("train=")
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id, "space")] == ["space/digits.py"]


def test_each_trial_run_has_params_metric_history_artifacts_and_status(first, store):
    _, _, trials, space_dir = first
    _, client, _ = store
    for trial_run in trials:
        record = json.loads((space_dir / "trials" / trial_run.data.tags["trial_id"] / "result.json").read_text())
        params = trial_run.data.params
        for name, value in record["config"].items():
            assert params[name] == str(value), name
        for metric in EPOCH_METRICS:
            history = client.get_metric_history(trial_run.info.run_id, metric)
            assert [m.step for m in history] == list(range(1, record["epochs_run"] + 1)), metric
        metrics = trial_run.data.metrics
        assert metrics["params"] == record["params"]
        assert metrics["size_mb"] == pytest.approx(record["size_mb"])
        assert metrics["seconds_per_epoch"] > 0 and metrics["images_per_second"] > 0
        plots = {a.path for a in client.list_artifacts(trial_run.info.run_id, "plots")}
        assert plots == {"plots/learning_curves.png", "plots/lr_schedule.png", "plots/confusion_matrix.png"}
        assert trial_run.data.tags["status"] == record["status"]
        assert trial_run.info.status == tracking.RUN_STATUS[record["status"]]


def test_best_trial_model_is_logged_not_registered(first, store):
    code, _, trials, space_dir = first
    _, client, _ = store
    best_id = json.loads((space_dir / "best.json").read_text())["trial_id"]
    with_model = [t.data.tags["trial_id"] for t in trials
                  if client.get_run(t.info.run_id).outputs.model_outputs]
    assert with_model == [best_id]
    # The registry holds promoted models only (search.ensemble registers them).
    assert client.search_model_versions("name='digits-classifier'") == []


def test_rerun_adds_trials_under_the_same_parent(first, resumed):
    _, parents_before, _, _ = first
    code, parents, trials = resumed
    assert [p.info.run_id for p in parents] == [parents_before[0].info.run_id]
    assert len(trials) == 3
    assert parents[0].info.status == RUN_STATUS[code]


def test_unreachable_server_warns_once_and_the_search_finishes(tmp_path, digits_folders, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    code = smoke(tmp_path, digits_folders, "--max-trials", "1")
    err = capsys.readouterr().err
    assert code in (0, 1)
    assert (tmp_path / "digits" / "trials.csv").exists()
    assert err.count("MLflow tracking is off") == 1 and "cannot reach the tracking server" in err
    assert not (tmp_path / "digits" / "mlflow.json").exists()
    assert time.monotonic() - started < 120


@pytest.fixture
def begun(tmp_path, monkeypatch):
    """(client, search, tracker): a tracker on a fresh SQLite store, its search begun."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    search = search_info(tmp_path)
    tracker = tracking.MlflowTracker(TrackingConfig(log_models="none"))
    tracker.on_search_begin(search)
    return client, search, tracker


def test_statuses_killed_failed_pruned_and_stale_runs(begun):
    client, search, tracker = begun
    ended = {}
    for number, status in ((1, COMPLETED), (2, FAILED), (3, PRUNED), (4, KILLED)):
        info = trial(search, number)
        tracker.on_trial_begin(search, info)
        for epoch in range(2):
            tracker.on_epoch_end(search, info, epoch, {"loss": 1.0 / (epoch + 1), "val_accuracy": 0.5})
        tracker.on_trial_end(search, info, result(info, status))
        ended[info.trial_id] = status
    tracker.on_trial_begin(search, trial(search, 5))  # a trial the process dies in
    assert tracker.enabled
    # A new start of the same search: same parent, the dead trial's run is marked KILLED.
    again = tracking.MlflowTracker(TrackingConfig(log_models="none"))
    again.on_search_begin(search)
    assert again.parent_id == tracker.parent_id
    interrupted = trial(search, 6)
    again.on_trial_begin(search, interrupted)
    again.on_search_end(search, KILLED)  # Ctrl-C mid-trial: on_trial_end never came

    parents, trials = runs_of(client)
    assert [p.info.status for p in parents] == ["KILLED"]
    got = {t.info.run_name: (t.info.status, t.data.tags["status"]) for t in trials}
    assert got == {
        "trial-001-00": ("FINISHED", COMPLETED), "trial-002-01": ("FAILED", FAILED),
        "trial-003-02": ("FINISHED", PRUNED), "trial-004-03": ("KILLED", KILLED),
        "trial-005-04": ("KILLED", KILLED), "trial-006-05": ("KILLED", KILLED),
    }
    failed = next(t for t in trials if t.info.run_name == "trial-002-01")
    assert failed.data.tags["error"] == "failed on purpose"
    assert len(client.get_metric_history(failed.info.run_id, "loss")) == 2


def test_trial_plots_are_logged_before_the_process_recycles(begun):
    # Plots are drawn on a background thread; os.execv (trials_per_process) would drop them,
    # so pausing the search waits for them.
    client, search, tracker = begun
    info = trial(search, 1)
    tracker.on_trial_begin(search, info)
    tracker.on_epoch_end(search, info, 0, {"loss": 1.0, "val_accuracy": 0.5})
    tracker.on_trial_end(search, info, result(info, COMPLETED))
    tracker.on_search_pause(search)
    assert not tracker._in_flight and tracker.enabled
    _, trials = runs_of(client)
    logged = {a.path for a in client.list_artifacts(trials[0].info.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/lr_schedule.png"} <= logged
    assert [p.info.status for p in runs_of(client)[0]] == ["RUNNING"]  # the search goes on elsewhere


def test_config_rejects_unknown_keys_and_env_overrides_uri(tmp_path, monkeypatch):
    config = tmp_path / "mlflow.yaml"
    config.write_text("tracking_url: sqlite:///x.db\n")
    with pytest.raises(SearchError, match="Did you mean 'tracking_uri'"):
        load_config(config)
    config.write_text("log_models: some\n")
    with pytest.raises(SearchError, match="best, all or none"):
        load_config(config)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    from search.tracking_config import tracking_uri

    assert tracking_uri(TrackingConfig(), tmp_path, "x") == "http://tracking.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(TrackingConfig(), tmp_path, "x") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_only_runs_of_dead_local_workers_count_as_stale():
    import socket
    import subprocess

    here = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not tracking._worker_alive(f"{here}:{gone.pid}")
    assert not tracking._worker_alive(None)  # runs from before workers were tagged
    assert tracking._worker_alive(f"{here}:{os.getppid()}")  # a live process of this machine
    assert tracking._worker_alive("another-machine:12345")  # cannot tell: leave it alone
