"""Held-out ensemble choice on real images: members chosen on one half of the val images and
scored on the other, an ensemble promoted only when that beats the best single trial by the
stated margin, and the figures beside the in-sample ones in ensemble.json, the console and MLflow."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from search import run
from search.ensembles import heldout
from search.ensembles import promote as promotion
from search.results.saved import locate

FASHION = Path("/usr/share/datasets/fashion-mnist")


def held_out(summary: dict, method: str) -> float:
    row = summary["candidates"][method] if method != "promoted" else summary["promoted"]
    return row[f"held_out_{summary['objective']}"]


def test_parts_are_disjoint_stratified_halves_covering_every_image():
    labels = np.repeat(np.arange(5), 7)
    first, second = heldout.parts(labels, seed=3)
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(35))
    assert abs(len(first) - len(second)) <= 1
    for label in range(5):
        assert abs(int((labels[first] == label).sum()) - int((labels[second] == label).sum())) <= 1


def test_the_digits_champion_scores_held_out_at_least_the_best_single_trial(searched):
    summary = json.loads((searched.space_dir / "ensemble.json").read_text())
    assert held_out(summary, "promoted") >= held_out(summary, "best_single")
    for row in summary["candidates"].values():  # held-out figures beside the in-sample ones, with the cost
        assert {"val_accuracy", "held_out_val_accuracy", "held_out_val_loss", "inference_cost"} <= set(row)
    assert summary["held_out"]["margin"] is not None and "2 val images" in summary["held_out"]["margin_rule"]
    assert "held-out accuracy" in searched.output and "chosen on one half" in searched.output

    from mlflow import MlflowClient

    client = MlflowClient(searched.tracking_uri)
    version = client.get_model_version_by_alias("digits-classifier", "champion")
    run = client.get_run(version.run_id)
    assert run.data.metrics["held_out_val_accuracy"] == pytest.approx(held_out(summary, "promoted"))
    assert float(version.tags["held_out_val_accuracy"]) == pytest.approx(held_out(summary, "promoted"))


def _fashion(root: Path, per_class: int) -> Path:
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for label in range(10):
        folder = root / str(label)
        folder.mkdir(parents=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
    return root


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed here")
def test_the_fashion_mnist_champion_scores_held_out_at_least_the_best_single_trial(tmp_path, capsys):
    data = _fashion(tmp_path / "fashion", per_class=30)
    runs = tmp_path / "runs"
    assert run.main([str(TINY), "--data", str(data), "--max-trials", "5", "--runs-dir", str(runs), "--quiet",
                     "--no-tracking"]) == 0
    summary = json.loads((runs / "tiny" / "ensemble.json").read_text())
    assert summary["finished_trials"] == 5
    assert held_out(summary, "promoted") >= held_out(summary, "best_single")
    if summary["promoted"]["method"] != "best_single":
        gained = held_out(summary, "promoted") - held_out(summary, "best_single")
        assert gained >= summary["held_out"]["margin"]
    assert "held-out accuracy" in capsys.readouterr().out


def _one_image_better(searched, tmp_path: Path) -> tuple[Path, str]:
    """The shared digits search reduced to its best trial, plus a trial that is that one with
    one image it got wrong made right and two it got right made barely wrong: averaged with
    the best trial, it gets exactly one more val image right."""
    space = tmp_path / "runs" / "digits"
    shutil.copytree(searched.space_dir, space, ignore=shutil.ignore_patterns("mlflow*", "*.lock"))
    summary = json.loads((space / "ensemble.json").read_text())
    best = summary["candidates"]["best_single"]["members"][0]
    for trial in (space / "trials").iterdir():
        if trial.name != best:
            shutil.rmtree(trial)
    labels = np.load(space / "val_labels.npy")
    p = np.load(space / "trials" / best / "val_probabilities.npy").astype(np.float64)
    predicted = p.argmax(1)
    ordered = np.sort(p, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    # All three in one half of the cross-fitting, so that no half sees the twin better than the best trial.
    half = heldout.parts(labels, locate("digits", tmp_path / "runs").seed)[0]
    wrong = [i for i in half if predicted[i] != labels[i]]
    sure = [j for j in half if predicted[j] == labels[j] and margins[j] > 1e-4]
    assert len(wrong) and len(sure) >= 2
    twin = p.copy()
    i = wrong[0]
    twin[i] = 0.0
    twin[i, labels[i]] = 1.0
    for j in sure[:2]:  # a quarter of the margin past the tie: wrong alone, right averaged with the best trial
        second = int(np.argsort(p[j])[-2])
        moved = 0.75 * margins[j]
        twin[j, labels[j]] -= moved
        twin[j, second] += moved
    twin_dir = space / "trials" / "9999"
    shutil.copytree(space / "trials" / best, twin_dir)
    np.save(twin_dir / "val_probabilities.npy", twin.astype(np.float32))
    record = json.loads((twin_dir / "result.json").read_text())
    record.update(trial_id="9999", model_path=str(twin_dir / "model.keras"),
                  val_probabilities_path=str(twin_dir / "val_probabilities.npy"))
    (twin_dir / "result.json").write_text(json.dumps(record))
    (space / "ensemble.json").unlink()
    (space / "champion.keras").unlink()
    return tmp_path / "runs", best


def test_a_one_image_in_sample_gain_is_not_promoted(searched, tmp_path):
    runs, best = _one_image_better(searched, tmp_path)
    summary = promotion.promote(locate("digits", runs), track=False)
    top_k, single = summary["candidates"]["top_k"], summary["candidates"]["best_single"]
    images = summary["val_images"]
    assert round((top_k["val_accuracy"] - single["val_accuracy"]) * images) == 1  # in-sample: one image better
    assert summary["promoted"]["method"] == "best_single" and summary["promoted"]["members"] == [best]
    assert "no ensemble beats it by the margin" in summary["reason"] and "held-out" in summary["reason"]
    assert summary["held_out"]["margin"] >= 2 / images
