"""A space with its own build_model, end to end: searched, tracked, promoted, predicted, exported."""

from __future__ import annotations

import json

import pandas as pd
from conftest import REPO
from mlflow import MlflowClient

from search import export, predict, run

SPACE = REPO / "spaces" / "digits_cnn.py"


def test_a_model_of_the_spaces_own_goes_from_search_to_phone(tmp_path, digits_folders, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert run.main([str(SPACE), "--smoke", "--data", str(digits_folders), "--runs-dir", str(tmp_path), "--quiet"]) == 0
    folder = tmp_path / "digits_cnn"
    table = pd.read_csv(folder / "trials.csv")
    assert (table["status"] == "COMPLETED").all() and set(table["backbone"]) == {"build_model"}
    assert {"filters", "blocks"} <= set(json.loads((folder / "trials" / "0000" / "result.json").read_text())["values"])
    assert (folder / "champion.keras").is_file()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("transfer-search/digits_cnn").experiment_id],
                              "tags.trial_id != ''")
    assert {r.data.tags["backbone"] for r in runs} == {"build_model"} and {"filters", "blocks"} <= set(runs[0].data.params)
    assert client.get_model_version_by_alias("digits_cnn-classifier", "champion")
    out = tmp_path / "predictions.csv"
    assert predict.main(["digits_cnn", "--runs-dir", str(tmp_path), "--images", str(digits_folders / "7"),
                         "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(list((digits_folders / "7").glob("*.png")))
    assert export.main(["digits_cnn", "--runs-dir", str(tmp_path), "--champion", "--max-images", "32",
                        "--no-tracking"]) == 0
    sizes = pd.read_csv(folder / "export" / "sizes.csv")
    assert (sizes["agreement_float32"] >= 0.99).all()
