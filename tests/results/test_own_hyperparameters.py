"""A space with its own build_model: its hyperparameters in trials.csv, the leaderboard,
importance and MLflow, and none of the built-in backbone's that its model never reads."""

from __future__ import annotations

import json

import pandas as pd
from conftest import TINY
from mlflow import MlflowClient

from search import report, run
from search.results import importance

BACKBONE_ONLY = {"weights", "fine_tune", "fine_tune_layers", "pooling", "head_batchnorm", "head_layers", "head_width"}


def test_a_build_model_space_shows_its_own_hyperparameters_everywhere(tmp_path, digits_folders, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    trials = importance.MIN_TRIALS
    assert run.main([str(TINY), "--data", str(digits_folders), "--max-trials", str(trials), "--runs-dir",
                     str(tmp_path), "--quiet", "--no-ensemble"]) == 0
    folder = tmp_path / "tiny"
    table = pd.read_csv(folder / "trials.csv")
    assert {"units", "learning_rate", "batch_size", "image_size"} <= set(table.columns)
    assert not BACKBONE_ONLY & set(table.columns) and set(table["backbone"]) == {"build_model"}
    assert table["units"].nunique() > 1

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("transfer-search/tiny").experiment_id
    runs = client.search_runs([experiment], "tags.trial_id != ''")
    assert len(runs) == trials
    for trial_run in runs:
        assert {"units", "learning_rate", "batch_size"} <= set(trial_run.data.params)
        assert not (BACKBONE_ONLY | {"backbone"}) & set(trial_run.data.params)
        assert trial_run.data.tags["backbone"] == "build_model"

    capsys.readouterr()
    assert report.main(["tiny", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "units" in pd.read_csv(folder / "leaderboard.csv").columns
    shares = pd.read_csv(folder / "importance.csv")
    assert "units" in set(shares["hyperparameter"]) and {"spread", "low", "high"} <= set(shares.columns)
    assert f"Which hyperparameters mattered (fANOVA over {trials} completed trials" in out and " ± " in out
    parent = json.loads((folder / "mlflow.json").read_text())["run_id"]
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/importance.png", "report/optuna_history.png", "report/optuna_slice.png",
            "report/optuna_parallel_coordinate.png", "report/optuna_param_importances.png"} <= logged
