"""The Python API a notebook uses: the command's search and promotion, results as Python
objects, mistakes as exceptions; and the example notebook, executed from a fresh kernel."""

from __future__ import annotations

import os

import nbformat
import pandas as pd
import pytest
from conftest import REPO, TINY
from nbclient import NotebookClient

import search

NOTEBOOK = REPO / "docs" / "notebook.ipynb"


@pytest.mark.slow  # in CI, the example notebook below runs the same run_space path to a champion
def test_run_space_returns_the_leaderboard_the_best_models_the_champion_and_the_study(tmp_path, digits_folders):
    result = search.run_space(TINY, data=digits_folders, max_trials=3, runs_dir=tmp_path, tracking=False,
                              sets={"batch_size": 8})
    assert result.status == "COMPLETED" and result.space == "tiny"
    board = result.leaderboard
    table = pd.read_csv(tmp_path / "tiny" / "trials.csv", dtype={"trial_id": str})
    assert sorted(board["trial_id"]) == sorted(table["trial_id"]) and list(board["rank"]) == [1, 2, 3]
    assert list(board["val_accuracy"]) == sorted(board["val_accuracy"], reverse=True)
    assert result.best_models[0] == tmp_path / "tiny" / "trials" / board["trial_id"].iloc[0] / "model.keras"
    assert result.champion == tmp_path / "tiny" / "champion.keras"
    assert result.ensemble["promoted"]["sha256"] and "held_out_val_accuracy" in result.ensemble["promoted"]
    assert result.load_champion().output_shape == (None, 10)
    assert len(result.study.trials) == 3
    again = search.open_results("tiny", runs_dir=tmp_path)  # read back later, without running
    assert list(again.leaderboard["trial_id"]) == list(board["trial_id"]) and again.champion == result.champion


def test_a_mistake_raises_a_search_error_not_system_exit(tmp_path):
    with pytest.raises(search.SearchError, match="does not exist"):
        search.run_space(TINY, data=tmp_path / "missing", runs_dir=tmp_path, tracking=False)
    with pytest.raises(search.SearchError, match="nope.py"):
        search.run_space(tmp_path / "nope.py", runs_dir=tmp_path)
    assert not (tmp_path / "tiny").exists()


def test_the_example_notebook_runs_from_a_fresh_kernel_to_a_champion(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCH_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"{tmp_path / 'digits' / 'champion.keras'} (None, 32, 32, 3) (None, 10)" in text
    assert "error: spaces/digits.py: Search(max_trials=0) must be a whole number >= 1." in text
    assert (tmp_path / "digits" / "champion.keras").is_file()
