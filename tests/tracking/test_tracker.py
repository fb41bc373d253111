"""MLflow tracking against a real SQLite store, read back with MlflowClient."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from conftest import REPO, TINY
from fakes import result, search_info, trial

from search import run
from search.tracking import tracker as tracking
from search.errors import SearchError
from search.core.status import COMPLETED, FAILED, KILLED, PRUNED, TrialStatus
from search.tracking.config import TrackingConfig, load_config

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
RUN_STATUS = {0: "FINISHED", 1: "FAILED", 130: "KILLED"}


def runs_of(client: MlflowClient) -> tuple[list, list]:
    """(search runs, trial runs) in the store, oldest first."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    every = client.search_runs(experiments, order_by=["attributes.start_time ASC"])
    return ([r for r in every if "mlflow.parentRunId" not in r.data.tags and "space_sha256" in r.data.tags],
            [r for r in every if "mlflow.parentRunId" in r.data.tags])


def tiny(runs_dir: Path, data: Path, *extra: str) -> int:
    return run.main([str(TINY), "--quiet", "--no-ensemble", "--data", str(data), "--runs-dir", str(runs_dir), *extra])


@pytest.fixture(scope="module")
def first(searched):
    """The shared real search (conftest.searched): 3 trials tracked, the champion promoted."""
    client = MlflowClient(searched.tracking_uri)
    parents, trials = runs_of(client)
    trials = [t for t in trials if "trial_id" in t.data.tags]
    return searched.code, parents, trials, searched.space_dir, client


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, digits_folders):
    """A tiny search of 2 trials, then resumed to 3, on one store."""
    root = tmp_path_factory.mktemp("resumed")
    uri = f"sqlite:///{root}/store/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tiny(root, digits_folders, "--max-trials", "2")
        before = runs_of(MlflowClient(uri))
        code = tiny(root, digits_folders, "--max-trials", "3")
    return before, code, *runs_of(MlflowClient(uri))


def test_one_parent_run_and_one_nested_run_per_trial(first):
    code, parents, trials, space_dir, _ = first
    assert len(parents) == 1 and len(trials) == 3
    assert {t.data.tags["mlflow.parentRunId"] for t in trials} == {parents[0].info.run_id}
    assert parents[0].info.status == RUN_STATUS[code]
    assert json.loads((space_dir / "mlflow.json").read_text())["run_id"] == parents[0].info.run_id


def test_parent_run_identifies_the_search(first):
    _, parents, _, space_dir, client = first
    tags = parents[0].data.tags
    for name in ("space_sha256", "git_commit", "data.classes", "data.counts", "data.content_hash",
                 "version.mlflow", "version.keras", "strategy", "replicas", "search.max_trials"):
        assert tags.get(name), name
    assert tags["data.counts"].startswith("train=")
    assert [a.path for a in client.list_artifacts(parents[0].info.run_id, "space")] == ["space/digits.py"]


def test_each_trial_run_has_params_metric_history_artifacts_and_status(first):
    _, _, trials, space_dir, client = first
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
        assert trial_run.info.status == TrialStatus(record["status"]).mlflow
        # What another machine needs to use the trial in the study's ensemble and report.
        files = {a.path for a in client.list_artifacts(trial_run.info.run_id, "trial")}
        assert files == {"trial/result.json", "trial/val_probabilities.npy", "trial/model.keras", "trial/val_labels.npy"}
        assert trial_run.data.tags["val_labels_digest"] == tracking.labels_digest(space_dir / "val_labels.npy")
        assert {"val_f1", "val_top5_accuracy", "val_class_accuracy_000", "best_val_f1"} <= set(metrics)


def test_best_trial_model_is_logged_and_only_the_promoted_one_registered(first):
    code, _, trials, space_dir, client = first
    best_id = json.loads((space_dir / "best.json").read_text())["trial_id"]
    with_model = [t.data.tags["trial_id"] for t in trials
                  if client.get_run(t.info.run_id).outputs.model_outputs]
    assert with_model == [best_id]
    # The registry holds promoted models only (search.ensemble registers them), not trials'.
    (version,) = client.search_model_versions("name='digits-classifier'")
    assert client.get_run(version.run_id).data.tags["kind"] == "ensemble"


def test_rerun_adds_trials_under_the_same_parent(resumed):
    (parents_before, trials_before), code, parents, trials = resumed
    assert len(trials_before) == 2
    assert [p.info.run_id for p in parents] == [parents_before[0].info.run_id]
    assert len(trials) == 3
    assert parents[0].info.status == RUN_STATUS[code]


def test_a_server_unreachable_at_the_start_is_one_line_before_anything_is_written(tmp_path, digits_folders,
                                                                                   monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    code = tiny(tmp_path, digits_folders, "--max-trials", "1")
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "the tracking store http://127.0.0.1:9 does not answer" in err
    assert not (tmp_path / "tiny").exists()
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
    assert not tracker.lost
    tracker._beating.set()
    tracking._OPEN.clear()  # as if this process were gone: nothing here holds its runs open any more
    # A new start of the same search: same parent, the dead trial's run is marked KILLED.
    again = tracking.MlflowTracker(TrackingConfig(log_models="none"))
    again.on_search_begin(search)
    assert again.parent_id == tracker.parent_id
    interrupted = trial(search, 6)
    again.on_trial_begin(search, interrupted)
    again.on_search_end(search, KILLED)  # Ctrl-C mid-trial: on_trial_end never came

    parents, trials = runs_of(client)
    assert [p.info.status for p in parents] == ["KILLED"]
    got = {t.data.tags["trial_id"]: (t.info.status, t.data.tags["status"]) for t in trials}
    assert got == {
        "00": ("FINISHED", COMPLETED), "01": ("FAILED", FAILED),
        "02": ("FINISHED", PRUNED), "03": ("KILLED", KILLED),
        "04": ("KILLED", KILLED), "05": ("KILLED", KILLED),
    }
    assert all(t.info.run_name.startswith(f"trial {int(t.data.tags['trial_number']):03d} ") for t in trials)
    failed = next(t for t in trials if t.data.tags["trial_id"] == "01")
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
    assert not tracker._in_flight and not tracker.lost
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
    from search.tracking.config import tracking_uri

    assert tracking_uri(TrackingConfig(), tmp_path, "x") == "http://tracking.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(TrackingConfig(), tmp_path, "x") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_a_run_of_a_dead_process_is_killed_at_once_and_one_elsewhere_by_age(begun):
    import subprocess

    from search.liveness import workers

    client, search, tracker = begun
    gone = subprocess.Popen(["true"])
    gone.wait()
    me = workers.this_worker()
    dead = workers.Worker(me.host, gone.pid, "", me.namespace, "dead")
    elsewhere = workers.Worker("another-machine", 1, "", "other-namespace", "far")
    runs = {}
    for name, worker, beat in (("dead", dead, time.time()), ("far-and-silent", elsewhere, time.time() - 7200),
                               ("far-and-beating", elsewhere, time.time())):
        run_id = client.create_run(tracker.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": tracker.parent_id, "trial_id": name, "worker": json.dumps(worker.record()),
            "heartbeat": f"{beat:.0f}"}).info.run_id
        runs[name] = run_id
    tracking.MlflowTracker(TrackingConfig(log_models="none")).on_search_begin(search)
    statuses = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert statuses == {"dead": "KILLED", "far-and-silent": "KILLED", "far-and-beating": "RUNNING"}


def test_a_worker_the_study_found_dead_has_its_runs_killed_at_once_and_no_one_elses(tmp_path, monkeypatch):
    """A worker on another machine cannot be seen to die; when a worker of the same study
    takes its trial for dead, that trial's run and the dead worker's search run end KILLED
    then, not 30 minutes later, and a live worker's runs and another study's are left alone."""
    from search.liveness import workers

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    search = search_info(tmp_path)
    search.settings.update(algorithm="tpe", options={"study": "shared"})
    me = tracking.MlflowTracker(TrackingConfig(log_models="none"))
    me.on_search_begin(search)
    far = {name: workers.Worker(f"machine-{name}", 7, "", "ns", name) for name in ("dead", "alive")}
    runs = {}
    for name, worker in far.items():
        beating = {"worker": json.dumps(worker.record()), "heartbeat": f"{time.time():.0f}"}
        parent = client.create_run(me.experiment_id, run_name=f"search-{name}", tags=beating).info.run_id
        runs[f"search-{name}"] = parent
        for study, trial_id in (("shared", "0003" if name == "dead" else "0004"), ("other", "0003")):
            runs[f"{study}-{trial_id}-{name}"] = client.create_run(me.experiment_id, run_name=trial_id, tags={
                **beating, "mlflow.parentRunId": parent, "trial_id": trial_id, "study": study}).info.run_id
    me.on_trial_lost(search, "0003")
    statuses = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert statuses == {"search-dead": "KILLED", "shared-0003-dead": "KILLED", "other-0003-dead": "RUNNING",
                        "search-alive": "RUNNING", "shared-0004-alive": "RUNNING", "other-0003-alive": "RUNNING"}
    assert client.get_run(me.parent_id).info.status == "RUNNING"


def test_only_a_store_outside_the_runs_folder_is_shared_with_other_machines(tmp_path):
    from search.tracking.config import shared

    runs = tmp_path / "runs"
    assert not shared(f"sqlite:///{runs}/mlflow.db", runs)
    assert not shared(f"file://{runs}/mlruns", runs) and not shared(str(runs / "mlruns"), runs)
    assert shared(f"sqlite:///{tmp_path}/nfs/mlflow.db", runs)
    assert shared("http://127.0.0.1:5000", runs) and shared("postgresql://u:p@db/mlflow", runs)


def test_three_trackers_starting_at_once_on_a_fresh_store_all_track(tmp_path):
    """MLflow's first use of a SQLite file migrates its schema; three processes doing it at the
    same instant raced ("duplicate column name") and the losers silently stopped tracking."""
    import subprocess
    import sys

    script = (
        "import sys; sys.path.insert(0, 'tests');"
        "from pathlib import Path; from fakes import search_info; from search.tracking import tracker;"
        "from search.tracking.config import TrackingConfig;"
        "t = tracker.MlflowTracker(TrackingConfig(log_models='none'));"
        f"t.on_search_begin(search_info(Path({str(tmp_path)!r}) / sys.argv[1], 'fake'));"
        "print('enabled' if not t.lost else 'disabled', t.experiment_id)"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen([sys.executable, "-c", script, f"w{i}"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(3)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [o[1][-1500:] for o in outputs]
    lines = [o[0].split()[-2:] for o in outputs]
    assert [state for state, _ in lines] == ["enabled"] * 3, outputs
    assert len({experiment for _, experiment in lines}) == 1  # one experiment, created once


def test_the_objective_is_each_runs_first_metric_so_the_compare_page_plots_it(first):
    # MLflow's compare page colours its parallel-coordinates plot by the first metric the compared
    # runs share, in the order they were first logged (it was the training accuracy).
    _, parents, trials, _, client = first
    for trial_run in trials:
        assert next(iter(client.get_run(trial_run.info.run_id).data.metrics)) == "val_accuracy"
    assert next(iter(client.get_run(parents[0].info.run_id).data.metrics)) == "best_val_accuracy"
