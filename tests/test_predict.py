"""search.predict on the shared real search of the digits: test-time augmentation and its
measured gain, and inputs that cannot be read (left out, named, the rest predicted)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from search import predict
from search.data.dataset import decode_image
from search.results.saved import locate

from conftest import digit_images, petals_example, write_records


def test_tta_offers_no_view_a_model_trained_without_augmentation_never_saw(searched, digits_folders, tmp_path,
                                                                           capsys):
    out = tmp_path / "predictions.csv"
    # spaces/digits.py trains with augmentation "none": a mirrored digit is not one it was trained on.
    assert predict.main(["digits", "--runs-dir", str(searched.runs), "--images", str(digits_folders / "3"),
                         "--out", str(out), "--tta", "2"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: --tta 2: the model was trained with augmentation 'none', which produces no view of an "
                      "image but the image itself; run without --tta."]
    assert not out.exists()


def _trained_with(searched, tmp_path: Path, policy: str) -> Path:
    """The shared search, its trial records saying they were trained with `policy`."""
    runs = tmp_path / "runs"
    shutil.copytree(searched.runs, runs, ignore=shutil.ignore_patterns("mlflow*", "mlartifacts", "*.lock"))
    for path in (runs / "digits" / "trials").glob("*/result.json"):
        record = json.loads(path.read_text())
        record["config"]["augmentation"] = policy
        path.write_text(json.dumps(record))
    return runs


def test_tta_that_loses_on_val_is_measured_and_not_applied_unless_forced(searched, digits_folders, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    runs = _trained_with(searched, tmp_path, "faces")  # faces views: the image, its mirror, zooms and turns
    saved = locate("digits", runs)
    model = keras.models.load_model(saved.folder.champion, compile=False)
    data = saved.open_data()
    plain, mirrored = [], []
    for images, _ in data.dataset("val", 32, 64):
        plain.append(model.predict_on_batch(images))
        mirrored.append(model.predict_on_batch(images[:, :, ::-1]))
    plain, mirrored, labels = np.concatenate(plain), np.concatenate(mirrored), data.labels("val")
    gain = float(((plain + mirrored).argmax(1) == labels).mean() - (plain.argmax(1) == labels).mean())
    assert gain <= 0  # the mirror of a digit is not one more look at it

    base = ["digits", "--runs-dir", str(runs), "--images", str(digits_folders / "3"), "--tta", "2"]
    out = tmp_path / "plain.csv"
    assert predict.main([*base, "--out", str(out)]) == 0
    summary = json.loads((tmp_path / "tta.json").read_text())
    assert summary["views"] == ["image", "mirror"] and summary["val_images"] == len(labels) == 359
    assert summary["gain"] == pytest.approx(gain) and summary["applied"] is False
    printed = capsys.readouterr().out
    assert f"({gain:+.4f}) on 359 val images; not applied, since it does not raise val accuracy" in printed
    name, _, probability = list(csv.reader(out.open()))[1]
    x = np.asarray(decode_image((digits_folders / "3" / name).read_bytes(), 32), np.float32)[None]
    assert float(probability) == pytest.approx(float(model.predict_on_batch(x)[0].max()), abs=1e-5)

    forced = tmp_path / "forced.csv"
    assert predict.main([*base, "--out", str(forced), "--force-tta"]) == 0
    assert json.loads((tmp_path / "tta.json").read_text())["applied"] is True
    assert "applied anyway, as --force-tta asks" in capsys.readouterr().out
    name, _, probability = list(csv.reader(forced.open()))[1]
    x = np.asarray(decode_image((digits_folders / "3" / name).read_bytes(), 32), np.float32)[None]
    expected = (model.predict_on_batch(x) + model.predict_on_batch(x[:, :, ::-1])) / 2
    assert float(probability) == pytest.approx(float(expected[0].max()), abs=1e-5)


def test_probabilities_of_every_class_sum_to_one_per_row(searched, digits_folders, digits_tfrecords, tmp_path):
    out = tmp_path / "predictions.csv"
    assert predict.main(["digits", "--runs-dir", str(searched.runs), "--images", str(digits_folders / "3"),
                         "--out", str(out), "--probabilities"]) == 0
    table = pd.read_csv(out, dtype={"label": str})
    classes = [str(i) for i in range(10)]
    assert list(table.columns) == ["file", "label", "probability", *classes]
    every = table[classes].to_numpy()
    np.testing.assert_allclose(every.sum(axis=1), 1.0, atol=1e-5)
    assert (table["label"] == [classes[i] for i in every.argmax(axis=1)]).all()
    np.testing.assert_allclose(table["probability"], every.max(axis=1), atol=1e-5)

    submission = tmp_path / "submission.csv"
    assert predict.main(["digits", "--runs-dir", str(searched.runs), "--images", str(digits_tfrecords),
                         "--out", str(submission), "--probabilities"]) == 0
    assert submission.read_text().splitlines()[0] == "id,label"  # still what Kaggle takes
    blend = pd.read_csv(tmp_path / "probabilities.csv")
    assert list(blend.columns) == ["id", *classes] and len(blend) == 10
    np.testing.assert_allclose(blend[classes].to_numpy().sum(axis=1), 1.0, atol=1e-5)
    assert list(blend["id"]) == [line.split(",")[0] for line in submission.read_text().splitlines()[1:]]


def test_a_submission_leaves_out_corrupt_records_and_undecodable_images_by_id(searched, digits_tfrecords, tmp_path,
                                                                              capsys):
    test = tmp_path / "test"
    shutil.copytree(digits_tfrecords / "tfrecords-jpeg-16x16" / "test", test)
    (_, _, one), (_, _, two) = digit_images(per_class=1)[:2]
    bad_image = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\xff\xd8" + b"\0" * 50])),
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"bad1"]))})).SerializeToString()
    not_an_example = b"not an example"  # a whole record, its checksum right: it only fails to parse
    write_records(test / "01-4.tfrec", [petals_example(one, id=b"g1"), bad_image, not_an_example,
                                        petals_example(two, id=b"g2")])
    write_records(test / "02-5.tfrec", [petals_example(two, id=f"c{i}".encode()) for i in range(5)])
    cut = (test / "02-5.tfrec").read_bytes()
    (test / "02-5.tfrec").write_bytes(cut[: len(cut) // 2])
    out = tmp_path / "submission.csv"
    assert predict.main(["digits", "--runs-dir", str(searched.runs), "--images", str(test), "--out", str(out)]) == 0
    ids = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert len(ids) == 10 + 2 + 2 and "bad1" not in ids and {"g1", "g2", "c0", "c1"} <= set(ids)
    printed = capsys.readouterr()
    warnings = printed.err.splitlines()
    assert warnings[0] == "warning: skipped 01-4.tfrec: record 2 is not an Example with 'id'; it is left out"
    assert warnings[1].startswith("warning: skipped 02-5.tfrec: truncated or corrupt after its first 2 records (")
    assert warnings[1].endswith("): the rest of the file is left out")
    assert warnings[2].startswith("warning: skipped record id bad1: its image does not decode (")
    assert f"{out}: 14 row(s) from " in printed.out and "skipped 3 unreadable input(s), named above" in printed.out


def test_a_folder_is_predicted_with_its_tiff_and_without_what_cannot_be_read(searched, digits_folders, tmp_path,
                                                                             capsys):
    folder = tmp_path / "images"
    shutil.copytree(digits_folders / "3", folder)
    Image.open(next(folder.glob("*.png"))).save(folder / "scan.tif")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "PNG")
    with open(os.path.join(os.fsencode(folder), b"na\xefve.png"), "wb") as f:
        f.write(buffer.getvalue())
    out = tmp_path / "predictions.csv"
    assert predict.main(["digits", "--runs-dir", str(searched.runs), "--images", str(folder), "--out", str(out)]) == 0
    rows = list(csv.reader(out.open(encoding="utf-8")))[1:]
    assert len(rows) == 20 + 1 and "scan.tif" in {r[0] for r in rows}
    err = capsys.readouterr().err
    assert "warning: skipped broken.jpg: " in err and "warning: skipped na\\xefve.png: its name is not valid UTF-8" in err
    assert not list(Path(searched.runs / ".data" / "converted").glob("*.tif"))  # converted copies are PNGs
