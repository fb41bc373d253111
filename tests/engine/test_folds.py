"""k-fold searches (`Search(folds=k)`): the folds, the one-line errors, and a real search whose
trials score the mean over folds and whose ensemble is chosen on out-of-fold probabilities."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY

from search import Search, run
from search.data import folds as kfold
from search.errors import DataError, SpaceError


def test_folds_are_stratified_deterministic_disjoint_and_cover_every_image():
    labels = np.repeat(np.arange(4), [9, 10, 11, 30])
    fold_of = kfold.assign(labels, 3, seed=7)
    assert np.array_equal(fold_of, kfold.assign(labels, 3, seed=7))  # the same folds for every trial
    assert not np.array_equal(fold_of, kfold.assign(labels, 3, seed=8))  # drawn from the search's seed
    assert sorted(set(fold_of.tolist())) == [0, 1, 2]  # each image in exactly one fold, every fold used
    for label in range(4):  # each class dealt out evenly
        per_fold = np.bincount(fold_of[labels == label], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1


def test_impossible_folds_are_one_line_errors():
    for bad in (1, 0, True, 2.5):
        with pytest.raises(SpaceError, match=r"folds=.* must be a whole number >= 2"):
            Search(folds=bad)
    with pytest.raises(SpaceError, match="hyperband"):
        Search(algorithm="hyperband", folds=3)
    with pytest.raises(DataError, match=r"class 'b' has 2 .* Use folds=2 or fewer"):
        kfold.check(3, np.array([0, 0, 0, 1, 1]), ["a", "b"], layout="folders")
    with pytest.raises(DataError, match="needs image folders"):
        kfold.check(3, np.array([0, 0, 0]), ["a"], layout="tfrecord")


def test_a_search_with_too_many_folds_stops_with_one_line_before_training(digits_folders, tmp_path, capsys):
    code = run.main([str(TINY), "--data", str(digits_folders), "--set", "folds=21", "--runs-dir", str(tmp_path),
                     "--no-tracking", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "folds=21" in error and "Use folds=20" in error
    assert not (tmp_path / "tiny" / "trials").exists()


def test_a_three_fold_search_scores_the_mean_over_folds_and_chooses_its_ensemble_out_of_fold(
        digits_folders, tmp_path):
    runs = tmp_path / "runs"
    assert run.main([str(TINY), "--data", str(digits_folders), "--set", "folds=3", "--max-trials", "2", "--epochs", "1",
                     "--runs-dir", str(runs), "--no-tracking", "--quiet"]) == 0
    folder = runs / "tiny"
    table = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
    assert table["status"].eq("COMPLETED").all()
    assert table["val_accuracy"].notna().all() and table["val_accuracy_fold_std"].notna().all()
    labels = np.load(folder / "val_labels.npy")
    assert len(labels) == 200  # every image of train+val, predicted out of fold
    for trial_id in table["trial_id"]:
        record = json.loads((folder / "trials" / trial_id / "result.json").read_text())
        probabilities = np.load(folder / "trials" / trial_id / "val_probabilities.npy")
        assert probabilities.shape == (200, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
        # The objective is the folds' mean, not the out-of-fold accuracy of the pooled images (they differ).
        assert record["best"]["val_accuracy"] == pytest.approx(table.set_index("trial_id").loc[trial_id,
                                                                                               "val_accuracy"])
        assert record["best"]["val_accuracy_fold_std"] >= 0
    summary = json.loads((folder / "ensemble.json").read_text())
    assert summary["val_images"] == 200 and "out-of-fold" in summary["held_out"]["method"]
    assert {"held_out_val_accuracy", "val_accuracy"} <= set(summary["candidates"]["greedy"])
    import keras

    champion = keras.models.load_model(folder / "champion.keras", compile=False)
    trial = keras.models.load_model(folder / "trials" / table["trial_id"][0] / "model.keras", compile=False)
    assert [layer.name for layer in trial.layers if isinstance(layer, keras.Model)] == ["fold1", "fold2", "fold3"]
    assert champion.output_shape == (None, 10)
