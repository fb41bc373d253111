"""search.pipeline through ImageData.dataset, on real images: the first pass decodes into the
in-memory store, later passes read it, every pass is a full reshuffle with labels intact."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from search import Data
from search.data.dataset import open_data


def one_pass(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, targets = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(targets)


def pairs(images: np.ndarray, targets: np.ndarray) -> list[tuple[bytes, object]]:
    """Each image with its target, order-free: what a pass must yield whatever its order."""
    return sorted((image.tobytes(), target) for image, target in zip(images, targets))


@pytest.fixture(params=["folders", "tfrecords"])
def copied(request, digits_folders, digits_tfrecords, tmp_path) -> Path:
    """A copy of a real dataset that a test may delete to prove what reads from memory."""
    source = digits_folders if request.param == "folders" else digits_tfrecords
    shutil.copytree(source, tmp_path / "data")
    return tmp_path / "data"


def test_later_passes_read_memory_and_each_reshuffles_every_image_with_its_label(copied, tmp_path):
    runs = tmp_path / "runs"
    truth = pairs(*one_pass(open_data(Data(str(copied), cache=False), runs_dir=runs).dataset("train", 16, 32)))
    data = open_data(Data(str(copied)), runs_dir=runs)
    train = data.dataset("train", 16, 32, shuffle=True, seed=5)
    first = one_pass(train)
    shutil.rmtree(copied)  # from here on only the store can serve the images
    second, third = one_pass(train), one_pass(train)
    for images, targets in (first, second, third):
        assert images.shape == (len(truth), 16, 16, 3) and images.dtype == np.float32
        assert pairs(images, targets) == truth
    orders = [images.reshape(len(images), -1)[:, :64].tobytes() for images, _ in (first, second, third)]
    assert len(set(orders)) == 3
    again = one_pass(data.dataset("train", 16, 32, shuffle=True, seed=5))  # a new pipeline, same store
    assert pairs(*again) == truth


def test_unshuffled_passes_keep_file_order_from_disk_and_from_memory(copied, tmp_path):
    data = open_data(Data(str(copied)), runs_dir=tmp_path / "runs")
    val = data.dataset("val", 16, 7)
    decoded = one_pass(val)
    shutil.rmtree(copied)
    stored = one_pass(val)
    assert np.array_equal(decoded[1], data.labels("val")) and np.array_equal(stored[1], data.labels("val"))
    assert np.array_equal(decoded[0], stored[0])


def test_a_first_pass_cut_short_is_decoded_again_in_full(copied, tmp_path):
    runs = tmp_path / "runs"
    truth = pairs(*one_pass(open_data(Data(str(copied), cache=False), runs_dir=runs).dataset("train", 16, 8)))
    data = open_data(Data(str(copied)), runs_dir=runs)
    batches = iter(data.dataset("train", 16, 8, shuffle=True, repeat=True))
    next(batches), next(batches)  # a trial that stopped two steps in
    del batches
    assert not data._pipelines[("train", 16)].store.complete()  # the case under test
    full = one_pass(data.dataset("train", 16, 8, shuffle=True, seed=1))
    assert pairs(*full) == truth  # nothing read from the half-filled store
    shutil.rmtree(copied)
    assert pairs(*one_pass(data.dataset("train", 16, 32, shuffle=True, seed=2))) == pairs(*full)


def test_same_seed_same_order_from_a_fresh_open(digits_folders, digits_tfrecords, tmp_path):
    for root in (digits_folders, digits_tfrecords):
        orders = []
        for seed in (3, 3, 4):
            data = open_data(Data(str(root)), runs_dir=tmp_path / "runs")
            orders.append(one_pass(data.dataset("train", 16, 32, shuffle=True, seed=seed))[0])
        assert np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], orders[2])


def test_without_cache_every_pass_reads_the_files(digits_folders, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(digits_folders, root)
    data = open_data(Data(str(root), cache=False), runs_dir=tmp_path / "runs")
    val = data.dataset("val", 16, 8)
    assert len(one_pass(val)[0]) == 40
    shutil.rmtree(root)
    assert sum(int(x.shape[0]) for x, _ in val) == 0  # nothing in memory; missing files are skipped


def test_a_store_made_inside_a_strategy_scope_stays_one_copy_on_the_cpu(tmp_path):
    """Two replicas (logical CPUs) train on the store; made inside the scope it is not mirrored."""
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from search import Data
        from search.data.dataset import open_data
        data = open_data(Data("builtin:digits"), runs_dir={str(tmp_path)!r})
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                                      keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
            model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
            train = data.dataset("train", 16, 64, shuffle=True)
        history = model.fit(train, epochs=4, verbose=0).history
        store = data._pipelines[("train", 16)].store._images
        print(type(store).__name__, store.device.endswith("CPU:0"), history["accuracy"][-1])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    kind, on_cpu, accuracy = done.stdout.split()[-3:]
    assert (kind, on_cpu) == ("ResourceVariable", "True") and float(accuracy) > 0.5


def test_a_file_broken_after_opening_costs_its_batch_not_the_pass(digits_folders, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(digits_folders, root)
    data = open_data(Data(str(root)), runs_dir=tmp_path / "runs")
    data._splits["train"].files[0].write_text("no longer an image")
    count = data.count("train")
    images, _ = one_pass(data.dataset("train", 16, 8, shuffle=True))
    assert count - 8 <= len(images) < count


def test_images_too_big_for_memory_are_decoded_every_pass_with_a_warning(digits_folders, tmp_path, monkeypatch, caplog):
    from search.data import pipeline

    root = tmp_path / "data"
    shutil.copytree(digits_folders, root)
    data = open_data(Data(str(root)), runs_dir=tmp_path / "runs")
    monkeypatch.setattr(pipeline, "available_memory", lambda: 40 * 16 * 16 * 3)  # room for 20 images
    val = data.dataset("val", 16, 8)
    assert len(one_pass(val)[0]) == 40
    assert "not keeping the val split's decoded images in memory at 16 px" in caplog.text
    shutil.rmtree(root)
    assert sum(int(x.shape[0]) for x, _ in val) == 0  # nothing was kept
