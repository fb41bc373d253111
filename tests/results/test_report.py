"""python -m search.report on trial records written by the results hook (no training)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow import MlflowClient
from fakes import RecordWriter, result, search_info, trial

from search import report
from search.tracking import tracker as tracking
from search.core.status import COMPLETED, FAILED
from search.tracking.config import TrackingConfig


def fake_search(runs_dir, tracker=None):
    """Four trials: three completed at different sizes, one failed; optionally tracked."""
    search = search_info(runs_dir)
    (search.space_dir / "search.json").write_text(json.dumps({"settings": search.settings}))
    hooks = [RecordWriter(), *([tracker] if tracker else [])]
    for hook in hooks:
        hook.on_search_begin(search)
    for number, backbone, accuracy, params, status in (
        (1, "MobileNet", 0.70, 3_000_000, COMPLETED), (2, "ResNet50", 0.90, 23_000_000, COMPLETED),
        (3, "MobileNet", 0.80, 3_200_000, COMPLETED), (4, "ResNet50", 0.0, 0, FAILED),
    ):
        info = trial(search, number, backbone=backbone)
        outcome = result(info, status, accuracy=accuracy, params=params)
        for hook in hooks:
            hook.on_trial_begin(search, info)
            hook.on_trial_end(search, info, outcome)
    for hook in hooks:
        hook.on_search_end(search, COMPLETED)
    return search.space_dir


def test_report_prints_ranks_and_writes_csv_and_size_plot(tmp_path, capsys):
    space_dir = fake_search(tmp_path)
    assert report.main(["fake", "--runs-dir", str(tmp_path), "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    assert "3 of 4 trials completed" in out
    assert "Best: trial 01 (ResNet50), val_accuracy 0.9000, 0.1000 ahead of trial 02" in out
    board = pd.read_csv(space_dir / "leaderboard.csv", dtype={"trial_id": str})
    assert list(board["trial_id"]) == ["01", "02", "00", "03"]  # completed by accuracy, then the failed one
    assert list(board["rank"].iloc[:3]) == [1, 2, 3]
    assert board["vs_best"].iloc[2] == pytest.approx(-0.2)
    plot = space_dir / "size_vs_accuracy.png"
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_report_takes_a_space_file_path_and_logs_to_the_parent_run(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    fake_search(tmp_path, tracking.MlflowTracker(TrackingConfig(log_models="none")))
    assert report.main(["spaces/fake.py", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "report logged to run" in out
    assert "Which hyperparameters mattered: not shown: 3 completed trial(s) with a val_accuracy" in out
    client = MlflowClient(uri)
    parent = json.loads((tmp_path / "fake" / "mlflow.json").read_text())["run_id"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    # Three completed trials: too few for importance, which says so instead of a table.
    assert {"report/leaderboard.csv", "report/size_vs_accuracy.png"} == logged


def test_a_space_never_run_is_one_line_error(tmp_path, capsys):
    assert report.main(["spaces/celeb.py", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no search of 'celeb'") and "Traceback" not in err
    assert f"python -m search.run spaces/celeb.py --runs-dir {tmp_path}" in err
