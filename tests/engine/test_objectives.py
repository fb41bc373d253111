"""The objective decides: with Search(objective="val_f1") early stopping, the epoch kept, the
leaderboard, pruning and the ensemble all follow macro F1, not accuracy. The data are real
digits made imbalanced (one class is most of the images), where the two rank models differently."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, digit_images
from PIL import Image

from search import metrics
from search.engine.runner import run_search
from search.ensembles.promote import promote
from search.results.records import leaderboard, load_records, trials_table
from search.results.saved import locate
from search.space import load_space


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    root = tmp_path_factory.mktemp("imbalanced")
    for label, index, image in digit_images(per_class=60):
        if label == 0 or index % 6 == 0:  # all 60 zeros, a few of each other digit
            (root / str(label)).mkdir(exist_ok=True)
            Image.fromarray(image).resize((16, 16)).save(root / str(label) / f"{index:04d}.png")
    return root


@pytest.fixture(scope="module")
def by_f1(tmp_path_factory, imbalanced):
    runs = tmp_path_factory.mktemp("runs")
    space = load_space(TINY, data_path=str(imbalanced), max_trials=5,
                       sets={"objective": "'val_f1'", "epochs": "8", "steps_per_epoch": "4", "early_stopping": "2"})
    outcome = run_search(space, runs_dir=runs, verbose=0, tracking=False)
    assert outcome.finished == 5
    return locate("tiny", runs)


def test_the_metrics_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    probabilities = rng.dirichlet(np.ones(5), 200)
    predicted = probabilities.argmax(1)
    assert metrics.macro_f1(probabilities, labels) == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics.accuracy(probabilities, labels) == pytest.approx(accuracy_score(labels, predicted))
    assert metrics.top_k_accuracy(probabilities, labels, 3) == pytest.approx(
        top_k_accuracy_score(labels, probabilities, k=3))


def test_each_trial_keeps_its_best_f1_epoch_and_stops_on_f1(by_f1):
    disagreements = 0
    for record in load_records(by_f1.folder):
        f1, accuracy = record["history"]["val_f1"], record["history"]["val_accuracy"]
        best = int(np.argmax(f1))
        disagreements += best != int(np.argmax(accuracy))
        assert record["best"]["val_f1"] == max(f1) and record["best"]["val_accuracy"] == accuracy[best]
        # The probabilities kept are those of the best F1 epoch (EarlyStopping restored it).
        kept = np.load(by_f1.folder.trial(record["trial_id"]).val_probabilities)
        assert metrics.macro_f1(kept, np.load(by_f1.folder.val_labels)) == pytest.approx(max(f1), abs=1e-6)
        # Patience 2 counted on F1: stopped 2 epochs after its best F1, or ran them all.
        assert record["epochs_run"] in (min(8, best + 3), 8)
    assert disagreements, "no trial where F1 and accuracy pick different epochs: the test proves nothing"


def test_the_leaderboard_and_the_ensemble_rank_by_f1(by_f1):
    table = trials_table(load_records(by_f1.folder))
    board = leaderboard(table, "val_f1")
    assert list(board["val_f1"]) == sorted(board["val_f1"], reverse=True)
    summary = promote(by_f1, track=False)
    assert summary["objective"] == "val_f1"
    single = summary["candidates"]["best_single"]
    assert single["members"] == [table.loc[table["val_f1"].idxmax(), "trial_id"]]
    assert single["val_f1"] == pytest.approx(table["val_f1"].max(), abs=1e-9)
    json.dumps(summary)  # and it serialises
