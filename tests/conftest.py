"""Shared fixtures: seeding, small real image datasets (scikit-learn's handwritten digits)
written to disk in each layout the framework reads, and one real search that the tests which
only read a search's results share."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import os
import random
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from processes import REPO, Zygote

DIGITS = REPO / "spaces" / "digits.py"
# A space with a model of its own small enough that a trial trains in under a second: for the
# machinery around trials (resume, crashes, locks, workers).
TINY = REPO / "tests" / "spaces" / "tiny.py"

PER_CLASS = 20
# The backbone of the notop weights file below, and of the tests that load it.
NOTOP_BACKBONE = "MobileNet"


# `make test` runs the tests on two pytest-xdist workers (--dist loadgroup). The tests that
# share one costly session fixture go to one worker, so that it is made once.
SHARED_FIXTURES = ("searched", "mlflow_server")
# Files of tests that take tens of seconds each, longest first. The workers take tests in
# collection order, one at a time (shared groups before all): these go first, so that the run
# does not end with one worker alone on a long test while the other has nothing left to do.
LONG_FIRST = (
    "servers/test_tracking_outage.py", "servers/test_storage_restart.py",
    "engine/test_staged.py", "engine/test_launcher.py", "test_api.py", "faults/test_crashes.py",
    "test_own_model.py", "results/test_own_hyperparameters.py", "servers/test_stalled_workers.py",
    "faults/test_disk_full.py", "faults/test_concurrency.py", "servers/test_secrets.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for name in SHARED_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
    rank = {REPO / "tests" / path: index for index, path in enumerate(LONG_FIRST)}
    if missing := [str(path) for path in rank if not path.is_file()]:
        raise pytest.UsageError(f"LONG_FIRST in tests/conftest.py names no such file: {', '.join(missing)}")
    items.sort(key=lambda item: rank.get(item.path, len(LONG_FIRST)))  # stable: the rest keep their order


def made_once(tmp_path_factory: pytest.TempPathFactory, fixture: str) -> None:
    """Fail if another xdist worker of this run made `fixture` too: its tests were not kept on
    one worker (pytest-xdist#1386: --dist loadgroup does not group on pytest 9.2)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    made = tmp_path_factory.getbasetemp().parent / f"{fixture}.made-by"
    try:
        os.close(os.open(made, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        pytest.fail(f"fixture {fixture!r} made by two xdist workers: --dist loadgroup is not grouping its tests")


@pytest.fixture(autouse=True)
def seed_everything() -> Iterator[None]:
    """Seed python, numpy and keras (which seeds tensorflow) before every test."""
    import keras

    random.seed(0)
    np.random.seed(0)
    keras.utils.set_random_seed(0)
    yield


def oracle_proposals(oracle, hp, folder: Path, trials: int) -> Iterator[dict]:
    """The values a Keras Tuner `oracle` proposes on the space `hp`, for up to `trials`
    trials, each ended before the next begins as in a search (no training: all score 0.5)."""
    oracle._set_project_dir(str(folder), "oracle")  # noqa: SLF001 - what a tuner would do
    oracle.update_space(hp)
    for index in range(trials):
        trial = oracle.create_trial(str(index))
        if trial.status != "RUNNING":  # the space is exhausted
            return
        yield dict(trial.hyperparameters.values)
        oracle.update_trial(trial.trial_id, {oracle.objective.name: 0.5})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)


def digit_images(per_class: int = PER_CLASS) -> list[tuple[int, int, np.ndarray]]:
    """(label, index, 8x8 uint8 image) for the first `per_class` digits of each class 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    picked = []
    for label in range(10):
        for index in np.flatnonzero(digits.target == label)[:per_class]:
            picked.append((label, int(index), images[index]))
    return picked


def _save(image: np.ndarray, path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize((16, 16), Image.NEAREST).save(path, fmt)


@pytest.fixture(scope="session")
def digits_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/<0..9>/<index>.png``: 20 grayscale 16x16 digits per class (layout ``folders``)."""
    root = tmp_path_factory.mktemp("digits_folders")
    for label, index, image in digit_images():
        _save(image, root / str(label) / f"{index:04d}.png")
    return root


@pytest.fixture(scope="session")
def digits_split_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/train/<0..9>/*.png`` (14 per class), ``root/val/<0..9>/*.png`` (6 per class) and
    ``root/test/*.png`` (10 unlabelled images, flat) - layout ``split_folders``."""
    root = tmp_path_factory.mktemp("digits_split_folders")
    seen: dict[int, int] = {}
    for label, index, image in digit_images():
        n = seen[label] = seen.get(label, 0) + 1
        split = "train" if n <= 14 else "val"
        _save(image, root / split / str(label) / f"{index:04d}.png")
    for label, index, image in digit_images(per_class=21)[20::21]:
        _save(image, root / "test" / f"{index:04d}.png")
    return root


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder `name` made by `make(folder)` once for the whole run: the first xdist worker
    to ask makes it under a lock, the others wait for it and share it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # this run's, shared by its workers
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # left half made by a worker that failed
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def notop_weights(digits_split_folders: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file of NOTOP_BACKBONE without its top for 32 px, trained a little on the digits
    so that its features say something, as the report's Level 2 loads a notop file; made once
    per run. MobileNet: of the backbones, the fewest layers to trace, so the fewest seconds."""

    def make(folder: Path) -> None:
        import keras

        from search.data.dataset import open_data
        from search.declare import Data
        from search.models import build

        keras.utils.set_random_seed(3)
        backbone = build.construct_headless(build.get_backbone(NOTOP_BACKBONE), (32, 32, 3), None)
        for layer in build.all_layers(backbone):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.5  # statistics that follow a few steps of training
        outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(backbone.output))
        model = keras.Model(backbone.input, outputs)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        data = open_data(Data(str(digits_split_folders)), runs_dir=folder / "runs")
        model.fit(data.dataset("train", 32, 16, shuffle=True, seed=1).map(lambda x, y: (x / 127.5 - 1.0, y)),
                  epochs=2, verbose=0)
        backbone.save_weights(folder / "mobilenet_notop.weights.h5")

    return once_per_run(tmp_path_factory, "notop", make) / "mobilenet_notop.weights.h5"


@pytest.fixture(scope="session")
def digits_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip shaped like Kaggle's 14-celebrity-faces one: ``data/train/<0..9>/*.jpg``
    (14 per class) and ``data/val/<0..9>/*.jpg`` (6 per class), plus a ``__MACOSX/`` entry."""
    path = tmp_path_factory.mktemp("digits_zip") / "digits-faces.zip"
    seen: dict[int, int] = {}
    with zipfile.ZipFile(path, "w") as archive:
        for label, index, image in digit_images():
            n = seen[label] = seen.get(label, 0) + 1
            split = "train" if n <= 14 else "val"
            buffer = io.BytesIO()
            Image.fromarray(image).resize((16, 16), Image.NEAREST).save(buffer, "JPEG", quality=95)
            archive.writestr(f"data/{split}/{label}/{index:04d}.jpg", buffer.getvalue())
        archive.writestr("__MACOSX/data/._junk.jpg", b"not an image")
    return path


def petals_example(image: np.ndarray, size: int = 16, **features: int | bytes) -> bytes:
    """One TFRecord in the Petals schema: `image` (JPEG of `image` at size x size) + features."""
    import tensorflow as tf

    buffer = io.BytesIO()
    Image.fromarray(image).convert("RGB").resize((size, size), Image.NEAREST).save(buffer, "JPEG", quality=90)
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()]))}
    for key, value in features.items():
        if isinstance(value, bytes):
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        else:
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="session")
def digits_tfrecords(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Petals-to-the-Metal schema under ``root/tfrecords-jpeg-16x16/``: ``train/*.tfrec``
    (2 files, 14 per class), ``val/00-60.tfrec`` (6 per class) with ``image`` JPEG bytes and
    ``class`` int64; ``test/00-20.tfrec`` with ``image`` and ``id`` (b"t0000"...) only."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("digits_tfrecords")
    base = root / "tfrecords-jpeg-16x16"
    for split in ("train", "val", "test"):
        (base / split).mkdir(parents=True)
    records: dict[str, list[bytes]] = {"train": [], "val": []}
    seen: dict[int, int] = {}
    for label, _, image in digit_images():
        n = seen[label] = seen.get(label, 0) + 1
        records["train" if n <= 14 else "val"].append(petals_example(image, **{"class": label}))
    rng = np.random.default_rng(0)
    train = [records["train"][i] for i in rng.permutation(len(records["train"]))]
    shards = {"train/00-70.tfrec": train[:70], "train/01-70.tfrec": train[70:], "val/00-60.tfrec": records["val"]}
    test = digit_images(per_class=22)[20::22]
    shards["test/00-20.tfrec"] = [petals_example(im, id=f"t{i:04d}".encode()) for _, i, im in test]
    for name, items in shards.items():
        with tf.io.TFRecordWriter(str(base / name)) as writer:
            for item in items:
                writer.write(item)
    return root


def write_records(path: Path, records: list[bytes]) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


PETALS_SIZES = (192, 224, 331, 512)


@pytest.fixture(scope="session")
def petals_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kaggle's Petals download as it unzips: ``tfrecords-jpeg-{192x192,224x224,331x331,512x512}/``,
    each with ``train/`` (20 digits, 2 per class), ``val/`` (10) and ``test/`` (5, carrying
    ``id``), every image a real digit JPEG at the folder's size, files named as Kaggle names
    them (``00-192x192-20.tfrec``: index, size, record count)."""
    root = tmp_path_factory.mktemp("petals_download")
    digits = digit_images(per_class=4)
    for size in PETALS_SIZES:
        base = root / f"tfrecords-jpeg-{size}x{size}"
        train = [petals_example(im, size, **{"class": label}) for label, _, im in digits[0::4] + digits[1::4]]
        val = [petals_example(im, size, **{"class": label}) for label, _, im in digits[2::4]]
        test = [petals_example(im, size, id=f"t{i:04d}".encode()) for _, i, im in digits[3::8]]
        for split, records in (("train", train), ("val", val), ("test", test)):
            write_records(base / split / f"00-{size}x{size}-{len(records)}.tfrec", records)
    return root


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 1,797 digits as builtin:digits writes them (class folders of PNGs), written once."""
    from search.data import builtin

    return builtin.materialise("builtin:digits", tmp_path_factory.mktemp("builtin"))


@dataclasses.dataclass
class Searched:
    """A real search of spaces/digits.py: 3 smoke trials, tracked in MLflow, its champion promoted."""

    runs: Path
    space_dir: Path
    tracking_uri: str
    code: int
    output: str


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Searched:
    from search import run

    made_once(tmp_path_factory, "searched")

    runs = tmp_path_factory.mktemp("searched") / "runs"
    uri = f"sqlite:///{runs.parent}/store/mlflow.db"
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        with contextlib.redirect_stdout(output):
            code = run.main([str(DIGITS), "--smoke", "--max-trials", "3", "--data", str(digits_root),
                             "--runs-dir", str(runs), "--quiet"])
    return Searched(runs, runs / "digits", uri, code, output.getvalue())


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """Forks `python -m search.<command>` processes from one that has imported the tool (see processes.py)."""
    forks = Zygote(tmp_path_factory.mktemp("zygote"))
    yield forks
    forks.close()


def cli(module: str, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: int = 600,
        ) -> subprocess.CompletedProcess:
    """`python -m search.<module> ARGS` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", f"search.{module}", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": "", **(env or {})},
    )


# `python -m search.run ARGS` in a process where importing TensorFlow fails: a mistake caught
# before the import answers in its one line; one caught after it would answer with an ImportError.
WITHOUT_TENSORFLOW = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = ['search.run', *sys.argv[1:]]; "
                      "runpy.run_module('search.run', run_name='__main__', alter_sys=True)")


def without_tensorflow(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""})
