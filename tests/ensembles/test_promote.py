"""Ensembles: selection on constructed probabilities, the saved ensemble model, promotion,
and the whole path from a real search to champion.keras, MLflow and submission.csv."""

from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from search import ensemble, predict
from search.ensembles import promote as promotion
from search.ensembles.model import build_ensemble_model
from search.ensembles.selection import greedy_selection, top_k_average
from search.runs.layout import RunsDir, SpaceDir
from search.results.saved import SavedSearch, locate
from search.ensembles.selection import best_single, weighted_average
from search.metrics import accuracy


def one_hot_ish(labels: np.ndarray, predicted: np.ndarray, confidence: float, classes: int = 3) -> np.ndarray:
    """Rows putting `confidence` on `predicted` and the rest spread over the other classes."""
    p = np.full((len(labels), classes), (1.0 - confidence) / (classes - 1))
    p[np.arange(len(labels)), predicted] = confidence
    return p


def complementary_pair() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A and B are each right on 60% (confidently) and wrong on the rest (hesitantly), on
    different rows; C is right on 80%. A+B averaged is right everywhere."""
    labels = np.arange(100) % 3
    wrong = (labels + 1) % 3
    a_right, b_right = np.arange(100) < 60, np.arange(100) >= 40
    c_right = np.arange(100) % 5 != 0
    a = np.where(a_right[:, None], one_hot_ish(labels, labels, 0.9), one_hot_ish(labels, wrong, 0.45))
    b = np.where(b_right[:, None], one_hot_ish(labels, labels, 0.9), one_hot_ish(labels, wrong, 0.45))
    c = np.where(c_right[:, None], one_hot_ish(labels, labels, 0.7), one_hot_ish(labels, wrong, 0.7))
    return {"a": a, "b": b, "c": c}, labels


def test_greedy_finds_two_complementary_weak_models():
    probabilities, labels = complementary_pair()
    single = best_single(probabilities, labels)
    assert single.members == ("c",) and single.val_accuracy == pytest.approx(0.8)
    greedy = greedy_selection(probabilities, labels)
    assert greedy.val_accuracy == 1.0
    assert {"a", "b"} <= set(greedy.members)
    assert promotion.beats(greedy, single)


def test_greedy_keeps_the_best_single_model_when_nothing_helps():
    labels = np.arange(60) % 3
    probabilities = {
        "strong": one_hot_ish(labels, labels, 0.98),
        "weak": one_hot_ish(labels, (labels + (np.arange(60) % 2)) % 3, 0.8),
        "noise": np.random.default_rng(0).dirichlet(np.ones(3), size=60),
    }
    greedy = greedy_selection(probabilities, labels)
    assert greedy.members == ("strong",) and greedy.weights == (1,)
    assert not promotion.beats(top_k_average(probabilities, labels, 2), best_single(probabilities, labels))


@pytest.mark.parametrize("seed", range(5))
def test_greedy_never_scores_below_the_best_single_trial(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=80)
    probabilities = {str(i): rng.dirichlet(np.ones(4) * 0.5, size=80) for i in range(6)}
    greedy = greedy_selection(probabilities, labels, rounds=20)
    assert greedy.score >= best_single(probabilities, labels).score
    assert all(isinstance(w, int) and w >= 1 for w in greedy.weights)
    average = weighted_average(probabilities, greedy.members, greedy.weights)
    assert accuracy(average, labels) == greedy.val_accuracy


def test_top_k_averages_the_k_best_with_equal_weights():
    probabilities, labels = complementary_pair()
    top = top_k_average(probabilities, labels, 2)
    assert top.members == ("a", "c")  # a and b tie: the lower id first
    assert top.weights == (1, 1)
    assert top_k_average(probabilities, labels, 10).size == 3  # all there are


def test_selection_rejects_predictions_of_the_wrong_shape():
    labels = np.zeros(10, int)
    with pytest.raises(ValueError, match="n_val=10"):
        greedy_selection({"a": np.ones((9, 3)) / 3}, labels)


# Promotion on a hand-made search folder with tiny models ---------------------------------

def tiny_model(size: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def fake_search(tmp_path: Path, probabilities: dict[str, np.ndarray], labels: np.ndarray) -> SavedSearch:
    space_dir = tmp_path / "runs" / "fake"
    for i, (trial_id, p) in enumerate(probabilities.items()):
        trial_dir = space_dir / "trials" / trial_id
        trial_dir.mkdir(parents=True)
        tiny_model(8, seed=i).save(trial_dir / "model.keras")
        np.save(trial_dir / "val_probabilities.npy", p.astype(np.float32))
        (trial_dir / "result.json").write_text(json.dumps({"trial_id": trial_id, "status": "COMPLETED"}))
    np.save(space_dir / "val_labels.npy", labels)
    record = {"data": {"root": str(tmp_path / "gone")}, "seed": 0, "settings": {}}
    (space_dir / "search.json").write_text(json.dumps(record))
    return SavedSearch("fake", SpaceDir(space_dir), RunsDir(tmp_path / "runs"), record, space=None)


def test_promote_keeps_the_best_single_trial_when_no_ensemble_beats_it(tmp_path):
    labels = np.arange(30) % 3
    probabilities = {"s": one_hot_ish(labels, labels, 0.99), "w": one_hot_ish(labels, (labels + 1) % 3, 0.6)}
    saved = fake_search(tmp_path, probabilities, labels)
    summary = promotion.promote(saved, track=False)
    assert summary["promoted"]["method"] == "best_single"
    assert "no ensemble beats it" in summary["reason"]
    champion = saved.space_dir / "champion.keras"
    assert champion.read_bytes() == (saved.space_dir / "trials" / "s" / "model.keras").read_bytes()
    written = json.loads((saved.space_dir / "ensemble.json").read_text())
    assert set(written["candidates"]) == {"best_single", "top_k", "greedy"}
    assert any("cannot be opened" in note for note in written["notes"])  # no data: said, not fatal


def test_promote_saves_the_better_ensemble_as_one_model(tmp_path):
    probabilities, labels = complementary_pair()
    saved = fake_search(tmp_path, probabilities, labels)
    summary = promotion.promote(saved, track=False)
    promoted = summary["promoted"]
    assert promoted["method"] in ("greedy", "top_k") and promoted["val_accuracy"] == 1.0
    model = keras.models.load_model(saved.space_dir / "champion.keras")
    images = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    members = {m: keras.models.load_model(saved.space_dir / "trials" / m / "model.keras").predict(images, verbose=0)
               for m in promoted["members"]}
    expected = weighted_average(members, promoted["members"], promoted["weights"])
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-6)


def test_an_unreachable_tracking_server_only_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    probabilities, labels = complementary_pair()
    saved = fake_search(tmp_path, probabilities, labels)
    summary = promotion.promote(saved)
    assert summary["mlflow"].startswith("warning: MLflow logging failed")
    assert (saved.space_dir / "champion.keras").is_file()
    assert capsys.readouterr().err.count("MLflow logging failed") == 1


def test_cli_reports_a_search_without_finished_trials_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "search.json").write_text("{}")
    assert ensemble.main(["empty", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no finished trials") and "Traceback" not in err
    assert ensemble.main(["nowhere", "--runs-dir", str(tmp_path)]) == 2
    assert "no search of 'nowhere'" in capsys.readouterr().err


def test_ensemble_model_is_the_weighted_average_of_members_of_different_sizes(tmp_path):
    from search.hparams import TrialConfig
    from search.models.build import build_model

    paths, members, sizes = [], [], (32, 40)
    for i, size in enumerate(sizes):
        keras.utils.set_random_seed(i)
        config = TrialConfig(backbone="MobileNet", weights="none", image_size=size, head_width=16)
        members.append(build_model(config, 5))
        paths.append(tmp_path / f"m{i}.keras")
        members[-1].save(paths[-1])
    weights = (1, 3)
    build_ensemble_model(paths, weights, names=["a", "b"]).save(tmp_path / "ensemble.keras")
    reloaded = keras.models.load_model(tmp_path / "ensemble.keras")
    assert reloaded.input_shape == (None, 40, 40, 3)

    images = np.random.default_rng(0).uniform(0, 255, (4, 40, 40, 3)).astype(np.float32)
    # Eager calls in inference mode: what predict() computes, without tracing a function per model.
    expected = sum(
        w * keras.ops.convert_to_numpy(m(keras.layers.Resizing(s, s)(images), training=False))
        for m, s, w in zip(members, sizes, weights)
    ) / sum(weights)
    predicted = keras.ops.convert_to_numpy(reloaded(images, training=False))
    np.testing.assert_allclose(predicted, expected, atol=1e-5)
    np.testing.assert_allclose(predicted.sum(axis=1), 1.0, atol=1e-5)


# End to end: the shared real search (conftest.searched) ---------------------------------

def test_search_promotes_an_ensemble_no_worse_than_its_best_trial(searched):
    summary = json.loads((searched.space_dir / "ensemble.json").read_text())
    assert summary["finished_trials"] == 3 and summary["trials"] == ["0", "1", "2"]
    promoted, single = summary["promoted"], summary["candidates"]["best_single"]
    assert promoted["val_accuracy"] >= single["val_accuracy"]
    assert {"val_f1", "val_top5_accuracy", "val_loss"} <= set(promoted)  # every metric, not only accuracy

    saved = locate("digits", searched.runs)
    data = saved.open_data()
    model = keras.models.load_model(saved.space_dir / "champion.keras")
    probabilities = {m: np.load(saved.space_dir / "trials" / m / "val_probabilities.npy") for m in promoted["members"]}
    expected = weighted_average(probabilities, promoted["members"], promoted["weights"])
    predicted = model.predict(data.dataset("val", 32, 64), verbose=0)
    np.testing.assert_allclose(predicted, expected, atol=1e-5)
    assert accuracy(predicted, data.labels("val")) == pytest.approx(promoted["val_accuracy"])


def test_the_promoted_model_is_registered_as_champion(searched):
    from mlflow import MlflowClient

    client = MlflowClient(searched.tracking_uri)
    summary = json.loads((searched.space_dir / "ensemble.json").read_text())
    version = client.get_model_version_by_alias("digits-classifier", "champion")
    assert version.tags["method"] == summary["promoted"]["method"]
    assert float(version.tags["val_accuracy"]) == pytest.approx(summary["promoted"]["val_accuracy"])
    assert version.tags["objective"] == "val_accuracy"
    run = client.get_run(version.run_id)
    assert run.data.params["members"] == ",".join(summary["promoted"]["members"])


def test_predict_a_folder_of_images_writes_file_label_probability(searched, digits_folders, tmp_path):
    out = tmp_path / "predictions.csv"
    assert predict.main(["digits", "--runs-dir", str(searched.runs), "--images", str(digits_folders / "3"),
                         "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["file", "label", "probability"]
    assert len(rows) == 1 + len(list((digits_folders / "3").glob("*.png")))
    assert all(r[1] in [str(i) for i in range(10)] and 0.0 < float(r[2]) <= 1.0 for r in rows[1:])


def test_predict_kaggle_test_records_writes_a_submission(searched, digits_tfrecords, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The whole Kaggle-style folder: only its test records (image + id) are predicted.
    assert predict.main(["digits", "--runs-dir", str(searched.runs), "--images", str(digits_tfrecords)]) == 0
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "id,label"
    ids = [line.split(",")[0] for line in lines[1:]]
    assert len(ids) == len(set(ids)) == 10 and all(i.startswith("t") for i in ids)
    assert all(0 <= int(line.split(",")[1]) < 10 for line in lines[1:])


# Refit, through the one trial function -------------------------------------------------------

def test_refit_on_train_val_scored_on_a_labelled_test_split(tmp_path, capsys):
    from PIL import Image

    from search import run
    from conftest import TINY, digit_images

    root = tmp_path / "digits"
    for n, (label, index, image) in enumerate(digit_images(per_class=12)):
        split = ("train", "train", "train", "train", "val", "test")[n % 6]
        (root / split / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / split / str(label) / f"{index:04d}.png")
    runs = tmp_path / "runs"
    args = [str(TINY), "--data", str(root), "--max-trials", "2", "--runs-dir", str(runs), "--quiet"]
    assert run.main([*args, "--no-ensemble", "--no-tracking"]) == 0
    assert not (runs / "tiny" / "ensemble.json").exists()
    assert ensemble.main([str(TINY), "--runs-dir", str(runs), "--refit", "--method", "top-k", "--no-tracking",
                          "--quiet"]) == 0
    summary = json.loads((runs / "tiny" / "ensemble.json").read_text())
    assert summary["refit"] is True
    assert all("test_accuracy" in c for c in summary["candidates"].values())
    assert "test_accuracy" in summary["promoted"]
    assert summary["promoted"]["method"] == "top_k" and summary["reason"] == "chosen with --method top_k"
    assert any("train+val" in note for note in summary["notes"])
    assert "cannot be measured honestly" in capsys.readouterr().out
    for member in summary["promoted"]["members"]:
        assert (runs / "tiny" / "ensemble" / "refit" / f"{member}.keras").is_file()


def test_refit_trains_under_the_strategy_with_the_global_batch_on_train_and_val_shuffled(tmp_path, digits_folders):
    """Two logical CPU devices and MirroredStrategy, as a refit on several GPUs or a TPU runs."""
    import subprocess
    import sys

    from conftest import REPO, TINY

    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from search.data import dataset as datasets
        from search.engine import runner
        from search.ensembles import promote
        from search.space import load_space
        from search.results.saved import locate

        space = load_space({str(TINY)!r}, data_path={str(digits_folders)!r}, max_trials=2)
        runner.run_search(space, runs_dir=__import__("pathlib").Path({str(tmp_path)!r}), verbose=0, tracking=False)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        promote.detect = lambda: strategy
        asked = []
        real = datasets.ImageData.dataset
        def spy(self, split, image_size, batch_size, **kw):
            asked.append((split, batch_size, kw.get("shuffle", False)))
            return real(self, split, image_size, batch_size, **kw)
        datasets.ImageData.dataset = spy
        import keras
        fitted = []
        real_fit = keras.Model.fit
        def fit(self, *a, **kw):
            fitted.append(type(self.distribute_strategy).__name__)
            return real_fit(self, *a, **kw)
        keras.Model.fit = fit
        promote.promote(locate("tiny", {str(tmp_path)!r}), refit=True, track=False, method="top_k")
        print(json.dumps({{"asked": asked, "fitted": fitted}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    refits = [a for a in found["asked"] if a[0] == "train+val"]
    record = json.loads((tmp_path / "tiny" / "trials" / "0" / "result.json").read_text())
    assert refits and all(shuffle for _, _, shuffle in refits)
    # The global batch: the trial's per-replica batch times the two replicas.
    assert {batch for _, batch, _ in refits} <= {8 * 2, 16 * 2} and record["config"]["batch_size"] in (8, 16)
    assert found["fitted"] == ["MirroredStrategy", "MirroredStrategy"]
