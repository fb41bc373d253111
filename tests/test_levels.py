"""The report's three levels as spaces, run with --smoke on small real stand-ins of their data,
and the Level 3 tools on a smoke-trained search: feature maps and the TFLite export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from search import run
from search.hparams import TrialConfig
from search.results.saved import locate
from search.space import load_space

from conftest import digit_images, oracle_proposals, petals_example

REPO = Path(__file__).resolve().parents[1]
FLOWERS = str(REPO / "spaces" / "flowers.py")
CELEB = str(REPO / "spaces" / "celeb.py")
DIGITS = str(REPO / "spaces" / "digits.py")


@pytest.fixture
def no_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from a folder whose mlflow.yaml turns tracking off (it costs time, not coverage, here)."""
    (tmp_path / "mlflow.yaml").write_text("enabled: false\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def petals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Petals-to-the-Metal layout (tfrecords-jpeg-331x331/{train,val,test}/*.tfrec) written
    from real images: 48x48 RGB JPEGs of handwritten digits, 6 train and 2 val per class, and
    10 test records carrying `id`. The pipeline resizes them as it would 331 px flowers."""
    import tensorflow as tf

    def example(image: np.ndarray, **features: int | bytes) -> bytes:
        return petals_example(image, 48, **features)

    root = tmp_path_factory.mktemp("petals")
    base = root / "tfrecords-jpeg-331x331"
    records: dict[str, list[bytes]] = {"train/00-60.tfrec": [], "val/00-20.tfrec": []}
    seen: dict[int, int] = {}
    for label, _, image in digit_images(per_class=8):
        n = seen[label] = seen.get(label, 0) + 1
        records["train/00-60.tfrec" if n <= 6 else "val/00-20.tfrec"].append(example(image, **{"class": label}))
    records["test/00-10.tfrec"] = [example(im, id=f"t{i:04d}".encode()) for _, i, im in digit_images(9)[8::9]]
    for name, items in records.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(base / name)) as writer:
            for item in items:
                writer.write(item)
    return root


def configs(space_file: str, folder: Path, sets: dict[str, str] | None = None) -> dict[str, TrialConfig]:
    """{backbone: its TrialConfig} as the space's own oracle proposes them, without training."""
    import keras_tuner as kt

    from search.engine.oracles import make_oracle  # also its fix for same-named conditional hyperparameters

    space = load_space(space_file, sets=sets)
    hp = kt.HyperParameters()
    space.declare(hp)
    found = {}
    for values in oracle_proposals(make_oracle(space.search, seed=0), hp, folder, trials=6):
        config = space.trial_config(values)
        found.setdefault(config.backbone, config)
    return found


def searched_data(searched) -> str:
    return json.loads((searched.space_dir / "search.json").read_text())["data"]["root"]


def result(space_dir: Path, trial: str = "0") -> dict:
    return json.loads((space_dir / "trials" / trial / "result.json").read_text())


def test_flowers_gives_each_backbone_the_reports_head(tmp_path: Path) -> None:
    found = configs(FLOWERS, tmp_path)
    assert set(found) == {"Xception", "DenseNet201", "efficientnet.EfficientNetB7"}
    xception = found["Xception"]
    assert (xception.fine_tune, xception.head_batchnorm, xception.head_layers, xception.head_width) == ("frozen", True, 1, 512)
    assert (xception.optimizer, xception.learning_rate, xception.dropout, xception.weights) == ("rmsprop", 5e-4, 0.2, "imagenet")
    for name in ("DenseNet201", "efficientnet.EfficientNetB7"):
        config = found[name]
        assert (config.fine_tune, config.head_layers, config.dropout, config.optimizer) == ("all", 0, 0.0, "adam")
        assert config.learning_rate == 5e-5
    assert found["efficientnet.EfficientNetB7"].weights == "noisy-student"
    assert found["DenseNet201"].weights == "imagenet"
    for config in found.values():
        assert (config.image_size, config.batch_size, config.schedule, config.augmentation) == (331, 16, "warmup_exp", "flowers")


def test_celeb_gives_resnet50_the_reports_head(tmp_path: Path) -> None:
    space = load_space(CELEB)
    assert (space.search.epochs, space.search.early_stopping) == (45, 8)
    found = {b: configs(CELEB, tmp_path / b, {"backbone": b})[b] for b in ("DenseNet201", "DenseNet121", "ResNet50")}
    assert {"DenseNet201", "DenseNet121", "ResNet50"} <= set(found)
    resnet = found["ResNet50"]
    assert (resnet.head_layers, resnet.head_width, resnet.dropout, resnet.learning_rate) == (2, 2048, 0.5, 3e-5)
    for name in ("DenseNet201", "DenseNet121"):
        config = found[name]
        assert config.head_layers == 1 and 128 <= config.head_width <= 8192 and 0.2 <= config.dropout <= 0.5
        assert config.augmentation == "faces" and config.image_size in (224, 256) and 8 <= config.batch_size <= 64


def test_flowers_smoke_on_petals_records(petals: Path, no_tracking: Path) -> None:
    runs = no_tracking / "runs"
    code = run.main([FLOWERS, "--smoke", "--data", str(petals), "--runs-dir", str(runs), "--quiet",
                     "--set", "backbone=Xception", "--max-trials", "1", "--no-ensemble"])
    assert code == 0
    record = result(runs / "flowers")
    assert record["status"] == "COMPLETED"
    config = record["config"]
    assert (config["backbone"], config["fine_tune"], config["head_batchnorm"], config["optimizer"]) == (
        "Xception", "frozen", True, "rmsprop")
    assert (config["image_size"], config["augmentation"], config["schedule"]) == (71, "flowers", "warmup_exp")
    assert np.load(runs / "flowers" / "trials" / "0" / "val_probabilities.npy").shape == (20, 104)


@pytest.mark.slow  # in CI, tests/data extracts a zip of this layout and test_celeb_gives_resnet50_the_reports_head builds its model
def test_celeb_smoke_on_the_celebrity_zip_layout(digits_zip: Path, no_tracking: Path) -> None:
    runs = no_tracking / "runs"
    code = run.main([CELEB, "--smoke", "--data", str(digits_zip), "--runs-dir", str(runs), "--quiet",
                     "--set", "backbone=ResNet50", "--max-trials", "1", "--no-ensemble"])
    assert code == 0
    config = result(runs / "celeb")["config"]
    assert (config["backbone"], config["head_layers"], config["head_width"], config["augmentation"]) == (
        "ResNet50", 2, 2048, "faces")


@pytest.mark.slow
def test_flowers_space_as_written_then_submission(petals: Path, no_tracking: Path) -> None:
    from search import predict

    runs = no_tracking / "runs"
    assert run.main([FLOWERS, "--smoke", "--data", str(petals), "--runs-dir", str(runs), "--quiet"]) == 0
    table = pd.read_csv(runs / "flowers" / "trials.csv")
    assert (table["status"] == "COMPLETED").all() and len(table) == 2
    out = no_tracking / "submission.csv"
    test_records = petals / "tfrecords-jpeg-331x331" / "test"
    assert predict.main([FLOWERS, "--runs-dir", str(runs), "--images", str(test_records), "--out", str(out)]) == 0
    submission = pd.read_csv(out)
    assert list(submission.columns) == ["id", "label"] and len(submission) == 10


@pytest.mark.slow
def test_celeb_space_as_written(digits_zip: Path, no_tracking: Path) -> None:
    runs = no_tracking / "runs"
    assert run.main([CELEB, "--smoke", "--data", str(digits_zip), "--runs-dir", str(runs), "--quiet", "--no-ensemble"]) == 0
    table = pd.read_csv(runs / "celeb" / "trials.csv")
    assert (table["status"] == "COMPLETED").all() and len(table) == 2


def test_featuremaps_of_a_trained_trial(searched, capsys: pytest.CaptureFixture[str]) -> None:
    from search import featuremaps

    image = next((Path(searched_data(searched)) / "3").glob("*.png"))
    out = searched.runs / "maps"
    code = featuremaps.main(["digits", "--runs-dir", str(searched.runs), "--trial", "0", "--image", str(image),
                             "--out", str(out)])
    assert code == 0
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == featuremaps.DEFAULT_LAYERS
    for picture in pictures:
        with Image.open(picture) as opened:
            assert opened.width > 200 and opened.height > 200
            pixels = np.asarray(opened.convert("L"), dtype=float)
        assert pixels.std() > 10  # a drawn grid, not a blank page
    assert "featuremaps logged to run" in capsys.readouterr().out


def test_featuremaps_user_mistakes_are_one_line(searched, capsys: pytest.CaptureFixture[str]) -> None:
    from search import featuremaps

    image = next((Path(searched_data(searched)) / "3").glob("*.png"))
    base = ["digits", "--runs-dir", str(searched.runs), "--image"]
    assert featuremaps.main([*base, str(image), "--trial", "99"]) == 2
    assert featuremaps.main([*base, str(image), "--trial", "0", "--layers", "Conv_99"]) == 2
    assert featuremaps.main([*base, str(searched.runs / "missing.png"), "--trial", "0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and "Conv_99" in errors[1]


def test_tflite_export_of_one_trial_in_every_variant_agrees_and_is_sized(searched) -> None:
    # One trial, every variant: the choice of one trial per backbone is tested without converting
    # (tests/test_export.py), and each conversion costs CI seconds.
    from search import export

    assert export.main(["digits", "--runs-dir", str(searched.runs), "--trial", "0", "--max-images", "96",
                        "--no-tracking"]) == 0
    folder = searched.runs / "digits" / "export"
    sizes = pd.read_csv(folder / "sizes.csv")
    assert list(sizes["model"]) == ["trial-0"] and sizes.iloc[0]["val_images"] == 96
    row = sizes.iloc[0]
    assert row["params"] > 2_000_000
    for variant in ("float32", "float16", "int8"):
        assert row[f"agreement_{variant}"] >= 0.99, variant
    # Integer activations round every layer's output, which can move the top-1 of an image whose
    # two best classes are close. Measured here: 1.0, but this smoke-trained model (3 steps) puts
    # every val image in one class, so top-1 agreement says little; its probabilities, compared
    # below, say whether the integer model computes the same thing.
    assert row["agreement_int8_full"] >= 0.9
    images = export.val_images(locate("digits", searched.runs).open_data(), 32, 64)
    floats = export.tflite_predict(folder / "trial-0.float32.tflite", images)
    integers = export.tflite_predict(folder / "trial-0.int8-full.tflite", images)
    assert np.abs(floats - integers).max() < 0.01  # measured 0.0017: half a step of the uint8 output (1/256)
    assert row["tflite_int8_full_mb"] < row["tflite_float16_mb"] < row["tflite_float32_mb"]
    assert row["tflite_int8_mb"] < row["tflite_float16_mb"]
    classes = [str(i) for i in range(10)]
    assert (folder / "labels.txt").read_text().splitlines() == classes
    for variant in export.VARIANTS:
        assert export.embedded_labels(folder / f"trial-0.{variant}.tflite") == classes, variant
    phone = export._interpreter(folder / "trial-0.int8-full.tflite")
    source, target = phone.get_input_details()[0], phone.get_output_details()[0]
    assert (source["dtype"], target["dtype"]) == (np.uint8, np.uint8)
    assert source["quantization"] == (1.0, 0)  # the camera's 0..255 pixels go in as they are
