"""The search end to end: the CLI on real digits, resume after a kill, failures, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from search import run
from search.space import load_space
from search.hooks import COMPLETED, FAILED

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "spaces" / "digits.py")


def cli(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.run", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""},
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = cli(DIGITS, "--smoke", "--runs-dir", str(runs), "--quiet")
    return result, runs / "digits"


def test_smoke_search_writes_trials_csv(smoke):
    result, space_dir = smoke
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(space_dir / "trials.csv")
    assert (table["status"] == COMPLETED).sum() >= 2
    for column in ("backbone", "dropout", "learning_rate", "val_accuracy", "val_loss", "epochs_run",
                   "seconds", "params", "size_mb"):
        assert column in table, column
    assert (table["params"] > 0).all() and (table["size_mb"] > 0).all()
    assert (space_dir / "best.keras").is_file()
    assert "Leaderboard" in result.stdout and "Trial 2/2" in result.stdout


def test_each_trial_keeps_its_model_and_val_probabilities(smoke):
    _, space_dir = smoke
    import numpy as np

    labels = np.load(space_dir / "val_labels.npy")
    for record_path in (space_dir / "trials").glob("*/result.json"):
        record = json.loads(record_path.read_text())
        probabilities = np.load(record["val_probabilities_path"])
        assert probabilities.shape == (len(labels), 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
        assert Path(record["model_path"]).is_file()


def test_rerun_of_a_finished_search_runs_nothing(smoke):
    _, space_dir = smoke
    before = {p: p.stat().st_mtime for p in (space_dir / "trials").glob("*/result.json")}
    result = cli(DIGITS, "--smoke", "--runs-dir", str(space_dir.parent), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    after = {p: p.stat().st_mtime for p in (space_dir / "trials").glob("*/result.json")}
    assert after == before


def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
    args = [sys.executable, "-m", "search.run", DIGITS, "--smoke", "--max-trials", "3",
            "--runs-dir", str(tmp_path), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""}
    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = tmp_path / "digits" / "trials"
    table_file = tmp_path / "digits" / "trials.csv"  # written once Keras Tuner has saved the trial
    deadline = time.monotonic() + 300
    while not table_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = list(trials.glob("*/result.json"))
    assert len(first) >= 1, "the first trial never finished"
    stamps = {p: p.stat().st_mtime for p in first}

    result = cli(DIGITS, "--smoke", "--max-trials", "3", "--runs-dir", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "digits" / "trials.csv")
    assert (table["status"] == COMPLETED).sum() == 3
    assert {p: p.stat().st_mtime for p in first} == stamps  # not re-run


def test_search_learns_well_above_chance(tmp_path):
    outcome = run.run_search(
        load_space(DIGITS, max_trials=1, epochs=3, sets={"backbone": "MobileNetV2", "batch_size": "32",
                                                              "learning_rate": "0.002", "optimizer": "adam"}),
        runs_dir=tmp_path, verbose=0,
    )
    assert outcome.status == COMPLETED
    assert outcome.table["val_accuracy"].max() >= 0.5  # chance is 0.1


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    from search import models

    real_build = models.build_model
    calls = {"n": 0}

    def flaky(config, num_classes):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated crash in trial one")
        return real_build(config, num_classes)

    monkeypatch.setattr(models, "build_model", flaky)
    outcome = run.run_search(load_space(DIGITS, smoke=True), runs_dir=tmp_path, verbose=0)
    assert outcome.status == COMPLETED
    statuses = outcome.table.sort_values("trial_id")["status"].tolist()
    assert statuses == [FAILED, COMPLETED]
    assert "simulated crash" in outcome.table["error"].iloc[0]
    assert (tmp_path / "digits" / "trials" / outcome.table["trial_id"].iloc[0] / "error.txt").is_file()


def test_consecutive_failures_stop_the_search_with_a_reason(tmp_path, monkeypatch):
    from search import models

    def broken(config, num_classes):
        raise RuntimeError("backbone exploded")

    monkeypatch.setattr(models, "build_model", broken)
    outcome = run.run_search(load_space(DIGITS, smoke=True, max_trials=5), runs_dir=tmp_path, verbose=0)
    assert outcome.status == FAILED and outcome.exit_code == 1
    assert "3 trials in a row failed" in outcome.message and "backbone exploded" in outcome.message
    assert len(outcome.table) == 3 and (outcome.table["status"] == FAILED).all()


def test_user_mistakes_are_one_line_with_no_traceback(tmp_path):
    bad_space = tmp_path / "bad.py"
    bad_space.write_text(Path(DIGITS).read_text().replace('"MobileNet"]', '"MobileNett"]'))
    cases = [
        ([str(bad_space)], "Did you mean 'MobileNet'"),
        ([DIGITS, "--data", str(tmp_path / "nowhere")], "nowhere"),
        ([DIGITS, "--set", "dropout"], "NAME=VALUE"),
        ([str(tmp_path / "nospace.py")], "does not exist"),
    ]
    for args, expected in cases:
        result = cli(*args, "--runs-dir", str(tmp_path / "runs"))
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "digits").exists()


def test_option_typo_suggests_the_option():
    result = cli(DIGITS, "--max-trails", "3")
    assert result.returncode == 2
    assert "Did you mean '--max-trials'" in result.stderr


def test_resuming_on_other_data_is_refused(tmp_path):
    from search.errors import SearchError

    space = load_space(DIGITS, smoke=True)
    space_dir = tmp_path / "digits"
    run._prepare_space_dir(space, space_dir, {"root": "/data/a", "content_hash": "aaa"}, fresh=False)
    run._prepare_space_dir(space, space_dir, {"root": "/data/a", "content_hash": "aaa"}, fresh=False)
    with pytest.raises(SearchError, match="other data"):
        run._prepare_space_dir(space, space_dir, {"root": "/data/b", "content_hash": "bbb"}, fresh=False)
    run._prepare_space_dir(space, space_dir, {"root": "/data/b", "content_hash": "bbb"}, fresh=True)


def test_no_tracking_leaves_mlflow_out(tmp_path, monkeypatch):
    from search import models, tracking

    def no_build(config, num_classes):
        raise RuntimeError("no training needed here")

    def no_tracking(space):
        raise AssertionError("tracking hooks were asked for with tracking=False")

    monkeypatch.setattr(models, "build_model", no_build)
    monkeypatch.setattr(tracking, "hooks_for", no_tracking)
    run.run_search(load_space(DIGITS, smoke=True), runs_dir=tmp_path, verbose=0, tracking=False)
    assert not (tmp_path / "digits" / "mlflow.json").exists()
    assert run.build_parser().parse_args([DIGITS, "--no-tracking"]).no_tracking


def test_no_tracking_reaches_the_ensemble_promoted_after_the_search(tmp_path, monkeypatch):
    # The promoted champion was registered in MLflow even under --no-tracking.
    from search import ensemble

    promoted = []
    monkeypatch.setattr(run, "run_search", lambda *a, **k: run.Outcome(status="COMPLETED", space_dir=tmp_path, table=None))
    monkeypatch.setattr(ensemble, "after_search", lambda space, runs_dir, *, track: promoted.append(track))
    assert run.main([DIGITS, "--runs-dir", str(tmp_path), "--no-tracking"]) == 0
    assert run.main([DIGITS, "--runs-dir", str(tmp_path)]) == 0
    assert promoted == [False, True]


def test_storage_passwords_are_not_recorded():
    from search.declare import Search

    search = Search(algorithm="tpe", options={"storage": "postgresql://optuna:s3cret@db-host:5432/optuna"})
    recorded = run.recorded_settings(search)
    assert recorded["options"]["storage"] == "postgresql://optuna:***@db-host:5432/optuna"
    assert run.redact("runs/x/optuna.journal") == "runs/x/optuna.journal"
    assert search.options["storage"].endswith("s3cret@db-host:5432/optuna")  # the search itself still connects


def test_search_continues_in_a_fresh_process_after_trials_per_process(tmp_path):
    result = cli(DIGITS, "--smoke", "--max-trials", "3", "--set", "trials_per_process=2",
                 "--runs-dir", str(tmp_path), "--quiet", "--no-ensemble")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("continuing in a fresh one") == 1
    assert "Resuming: 2 trial(s) already recorded" in result.stdout
    table = pd.read_csv(tmp_path / "digits" / "trials.csv")
    assert sorted(table["status"]) == [COMPLETED] * 3
    assert table["trial_id"].is_unique
