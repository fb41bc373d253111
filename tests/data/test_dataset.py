"""search.data and search.augment on real images: every layout, formats, bad files, errors."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from search import Data
from search.data import builtin as _builtin, folders as _files
from search.data.augment import POLICIES, RandomAffine, RandomRot90Transpose, affine_transforms, augmentation, warp
from search.data.dataset import open_data
from search.errors import DataError


def collect(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, targets = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(targets)


def test_folders_split_is_stratified_seeded_and_reproducible(digits_folders, tmp_path):
    runs = tmp_path / "runs"
    data = open_data(Data(str(digits_folders)), runs_dir=runs, seed=0)
    assert data.layout == "folders"
    assert data.class_names == [str(i) for i in range(10)]
    assert (data.count("train"), data.count("val")) == (160, 40)
    assert np.bincount(data.labels("val"), minlength=10).tolist() == [4] * 10
    again = open_data(Data(str(digits_folders)), runs_dir=runs, seed=0)
    other = open_data(Data(str(digits_folders)), runs_dir=runs, seed=1)
    val = collect(data.dataset("val", 16, 64))[0]
    assert np.array_equal(val, collect(again.dataset("val", 16, 64))[0])
    assert not np.array_equal(val, collect(other.dataset("val", 16, 64))[0])
    assert data.fingerprint == again.fingerprint
    assert not data.has_split("test")


def test_split_folders_labels_follow_unshuffled_order_and_test_yields_ids(digits_split_folders, tmp_path):
    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    assert data.layout == "split_folders"
    assert (data.count("train"), data.count("val"), data.count("test")) == (140, 60, 10)
    images, labels = collect(data.dataset("val", 20, 7))
    assert images.shape == (60, 20, 20, 3) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 255 and images.max() > 200
    assert np.array_equal(labels, data.labels("val"))
    _, shuffled = collect(data.dataset("val", 20, 7, shuffle=True, seed=3))
    assert sorted(shuffled) == sorted(labels) and not np.array_equal(shuffled, labels)
    _, ids = collect(data.dataset("test", 20, 4))
    assert ids.dtype == object and ids[0].decode().startswith("test/") and len(set(ids)) == 10
    with pytest.raises(DataError, match="no labels"):
        data.labels("test")
    assert "split_folders" in data.describe() and "test 10 (unlabelled)" in data.describe()


def test_zip_is_extracted_once_and_its_data_folder_found(digits_zip, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    data = open_data(Data(str(digits_zip)), runs_dir=runs)
    assert data.layout == "split_folders"
    assert data.root.parent.parent == runs / ".data" and data.root.name == "data"
    assert data.root.parent.name.startswith("digits-faces-")
    assert (data.count("train"), data.count("val"), data.skipped) == (140, 60, [])

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(zipfile.ZipFile, "extractall", no_second_extraction)
    assert open_data(Data(str(digits_zip)), runs_dir=runs).fingerprint == data.fingerprint
    x, y = next(iter(data.dataset("train", 32, 8, augmentation="faces", shuffle=True, repeat=True)))
    assert x.shape == (8, 32, 32, 3) and y.dtype == tf.int32


def test_tfrecords_are_found_counted_and_read_in_order(digits_tfrecords, tmp_path):
    names = [f"digit {i}" for i in range(10)]
    data = open_data(Data(str(digits_tfrecords), class_names=names), runs_dir=tmp_path)
    assert data.layout == "tfrecord" and data.class_names == names and data.num_classes == 10
    assert (data.count("train"), data.count("val"), data.count("test")) == (140, 60, 10)
    images, labels = collect(data.dataset("train", 16, 32))
    assert images.shape == (140, 16, 16, 3)
    assert np.array_equal(labels, data.labels("train"))
    _, ids = collect(data.dataset("test", 16, 32))
    assert all(i.startswith(b"t") for i in ids) and len(set(ids)) == 10
    plain = open_data(Data(str(digits_tfrecords)), runs_dir=tmp_path)
    assert plain.class_names == [str(i) for i in range(10)]


def test_tfrecord_glob_matching_nothing_names_the_setting(digits_tfrecords, tmp_path):
    spec = Data(str(digits_tfrecords), layout="tfrecord", val="tfrecords-jpeg-16x16/valid/*.tfrec")
    with pytest.raises(DataError, match=r"Data\(val='tfrecords-jpeg-16x16/valid/\*.tfrec'\)"):
        open_data(spec, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def _image_formats(folder: Path) -> None:
    red = np.zeros((10, 12, 3), np.uint8)
    red[..., 0] = 255
    folder.mkdir(parents=True)
    Image.fromarray(red).save(folder / "rgb.JPG", "JPEG")
    Image.fromarray(red).convert("CMYK").save(folder / "cmyk.jpg", "JPEG")
    Image.fromarray(red[..., 0]).save(folder / "gray.jpeg", "JPEG")
    rgba = np.concatenate([red, np.full((10, 12, 1), 30, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(folder / "alpha.png")
    Image.fromarray(red).save(folder / "bitmap.bmp")
    Image.fromarray(red).save(folder / "anim.gif", save_all=True, append_images=[Image.new("RGB", (12, 10))])
    (folder / "notes.txt").write_text("not an image, ignored")
    (folder / ".DS_Store").write_bytes(b"\0\0")


def test_every_image_format_arrives_as_rgb_float32(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            _image_formats(tmp_path / "d" / split / cls)
    data = open_data(Data(str(tmp_path / "d")), runs_dir=tmp_path / "runs")
    assert data.skipped == [] and data.count("train") == 12
    images, _ = collect(data.dataset("train", 24, 5))
    assert images.shape == (12, 24, 24, 3) and images.dtype == np.float32
    # Every file is red; grayscale 255 becomes white, which is also 255 in the red channel.
    assert np.all(images[:, 8:16, 8:16, 0] > 200)


@pytest.fixture()
def damaged(digits_split_folders, tmp_path) -> Path:
    root = tmp_path / "damaged"
    shutil.copytree(digits_split_folders, root)
    good = next((root / "train" / "3").glob("*.png"))
    buffer = Image.open(good).convert("RGB")
    buffer.save(root / "train" / "3" / "whole.jpg", "JPEG")
    data = (root / "train" / "3" / "whole.jpg").read_bytes()
    (root / "train" / "3" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "val" / "5" / "x.jpg").write_text("this is a text file")
    return root


def test_unreadable_files_are_skipped_named_and_never_crash_training(damaged, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    data = open_data(Data(str(damaged)), runs_dir=runs)
    assert [name for name, _ in data.skipped] == ["train/3/truncated.jpg", "val/5/x.jpg"]
    assert "JPEG" in data.skipped[0][1] and "Unknown image file format" in data.skipped[1][1]
    assert data.count("train") == 141 and "truncated.jpg" in data.describe()
    images, _ = collect(data.dataset("train", 16, 32, augmentation="flowers", shuffle=True))
    assert len(images) == 141
    assert list((runs / ".data" / "checks").glob("*.json"))

    def no_decoding(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(_files, "_decode", no_decoding)
    assert open_data(Data(str(damaged)), runs_dir=runs).skipped == data.skipped


def _errors(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Broken dataset folders, each with what its error must say."""
    empty = tmp_path / "empty_class"
    (empty / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(empty / "cat" / "b.png")
    (empty / "dog").mkdir()
    (empty / "dog" / "readme.txt").write_text("no images")
    one_split = tmp_path / "one_split"
    for split, cls in (("train", "cat"), ("val", "cat"), ("train", "dog")):
        (one_split / split / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(one_split / split / cls / "a.png")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "notes.txt").write_text("hello")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    return {
        "empty class": (empty, r"class folder\(s\) .*dog hold no images"),
        "class in one split": (one_split, r"class 'dog' has a folder in .*train but not in .*val"),
        "no images": (nothing, r"no images \(jpg, jpeg, png, bmp, gif, webp, tif, tiff.*\) found under .*nothing"),
        "loose images": (loose, r"holds 1 images but no class folders"),
    }


@pytest.mark.parametrize("case", ["empty class", "class in one split", "no images", "loose images"])
def test_broken_datasets_raise_one_clear_line(case, tmp_path):
    folder, message = _errors(tmp_path)[case]
    runs = tmp_path / "runs"
    with pytest.raises(DataError, match=message) as raised:
        open_data(Data(str(folder)), runs_dir=runs)
    assert "\n" not in str(raised.value)
    assert not runs.exists()


def test_missing_path_mentions_hint_and_data_option(tmp_path):
    spec = Data(str(tmp_path / "celeb.zip"), hint="kaggle datasets download -d x/celeb")
    with pytest.raises(DataError, match=r"does not exist: kaggle datasets download .*--data PATH"):
        open_data(spec, runs_dir=tmp_path / "runs")
    with pytest.raises(DataError, match="--data PATH"):
        open_data(Data(), runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_path_override_and_home_expansion(digits_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(digits_folders.parent))
    data = open_data(Data("/nowhere"), runs_dir=tmp_path, path_override=f"~/{digits_folders.name}")
    assert data.root == digits_folders.resolve()


def test_builtin_digits_is_written_once(tmp_path, monkeypatch):
    data = open_data(Data("builtin:digits"), runs_dir=tmp_path)
    assert data.root == tmp_path / "data" / "digits" and data.layout == "folders"
    assert data.count("train") + data.count("val") == 1797 and data.num_classes == 10

    def no_rewrite(*args, **kwargs):
        raise AssertionError("rewrote the digits")

    monkeypatch.setattr(_builtin, "_write_pngs", no_rewrite)
    assert open_data(Data("builtin:digits"), runs_dir=tmp_path).fingerprint == data.fingerprint
    with pytest.raises(DataError, match="Did you mean 'digits'"):
        open_data(Data("builtin:digit"), runs_dir=tmp_path)


@pytest.mark.skipif(not _builtin.FASHION_DIR.is_dir(), reason="apt package dataset-fashion-mnist is not installed")
def test_builtin_fashion_mnist_keeps_per_class_limit(tmp_path):
    data = open_data(Data("builtin:fashion-mnist?per_class=5"), runs_dir=tmp_path)
    assert data.layout == "split_folders"
    assert sorted(data.class_names) == sorted(_builtin.FASHION_CLASSES)
    assert (data.count("train"), data.count("val")) == (50, 50)
    images, _ = collect(data.dataset("val", 28, 50))
    assert images.shape == (50, 28, 28, 3)


def test_cache_is_reused_across_dataset_calls(digits_folders, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(digits_folders, root)
    data = open_data(Data(str(root)), runs_dir=tmp_path / "runs")
    first = collect(data.dataset("val", 16, 8))[0]
    shutil.rmtree(root)  # a second pass can only succeed from the in-memory cache
    second = collect(data.dataset("val", 16, 8, shuffle=True))[0]
    assert len(second) == len(first) == 40


@pytest.mark.parametrize("policy", POLICIES)
def test_policies_keep_shape_and_dtype(policy):
    layers = augmentation(policy, 24, seed=0)
    if policy == "none":
        assert layers is None
        return
    batch = tf.random.uniform([6, 24, 24, 3], 0, 255)
    out = layers(batch, training=True)
    assert out.shape == (6, 24, 24, 3) and out.dtype == tf.float32
    assert np.array_equal(layers(batch, training=False), batch)


def _top_brighter(policy: str) -> np.ndarray:
    """Per image of 64 draws: is the top quarter brighter than the bottom quarter?"""
    image = np.zeros([64, 32, 32, 3], np.float32)
    image[:, :16] = 255.0
    out = augmentation(policy, 32, seed=1)(image, training=True).numpy()
    return out[:, :8].mean(axis=(1, 2, 3)) > out[:, -8:].mean(axis=(1, 2, 3))


def test_faces_never_flips_vertically_but_flowers_does():
    assert _top_brighter("faces").all()
    assert not _top_brighter("flowers").all()


def _warp_one(image: np.ndarray, **params: float) -> np.ndarray:
    height, width = image.shape[:2]
    values = {"angle": 0.0, "zoom": 1.0, "shift_x": 0.0, "shift_y": 0.0, "flip": 1.0, **params}
    transforms = affine_transforms(**{k: tf.constant([v]) for k, v in values.items()},
                                   height=tf.constant(float(height)), width=tf.constant(float(width)))
    return warp(tf.constant(image[None]), transforms)[0].numpy()


def test_one_affine_warp_rotates_flips_and_shifts_exactly():
    image = np.random.default_rng(0).uniform(0, 255, [9, 9, 3]).astype(np.float32)
    assert np.allclose(_warp_one(image), image)
    assert np.allclose(_warp_one(image, flip=-1.0), image[:, ::-1], atol=1e-3)
    quarter = _warp_one(image, angle=np.pi / 2)
    assert np.allclose(quarter, np.rot90(image, k=1), atol=1e-3) or np.allclose(quarter, np.rot90(image, k=-1), atol=1e-3)
    shifted = _warp_one(image, shift_x=2.0)  # output column x reads input column x + 2, edges repeat
    assert np.allclose(shifted[:, :7], image[:, 2:], atol=1e-3)
    assert np.allclose(shifted[:, 7:], image[:, 8:9], atol=1e-3)
    zoomed = _warp_one(image, zoom=0.5)  # the centre pixel stays, its neighbours spread out
    assert np.allclose(zoomed[4, 4], image[4, 4], atol=1e-3)
    assert np.allclose(zoomed[4, 6], image[4, 5], atol=1e-3)


def test_faces_warps_within_its_ranges():
    # A single bright pixel at the centre moves at most 10% of the size (the shift); the
    # rotation and zoom keep the centre where it is.
    image = np.zeros([64, 41, 41, 3], np.float32)
    image[:, 20, 20] = 255.0
    out = augmentation("faces", 41, seed=3)(image, training=True).numpy().sum(axis=-1)
    rows, cols = np.unravel_index(out.reshape(64, -1).argmax(axis=1), (41, 41))
    assert np.abs(rows - 20).max() <= 5 and np.abs(cols - 20).max() <= 5
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # the shifts do vary


def test_unknown_policy_and_layer_config():
    with pytest.raises(DataError, match="Did you mean 'faces'"):
        augmentation("face", 32)
    for layer in (RandomRot90Transpose(0.3, 0.1, seed=4), RandomAffine(0.1, 0.2, 0.05, flip=True, seed=2)):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_tfrecords_in_several_folders_that_are_not_sizes_ask_which(digits_tfrecords, tmp_path):
    # Kaggle's size folders are chosen from (tests/data/test_records.py); any others are the user's to pick.
    root = tmp_path / "records"
    shutil.copytree(digits_tfrecords / "tfrecords-jpeg-16x16", root / "first")
    shutil.copytree(digits_tfrecords / "tfrecords-jpeg-16x16", root / "second")
    with pytest.raises(DataError, match=r"Data\(train='second/train/\*.tfrec'\)"):
        open_data(Data(str(root)), runs_dir=tmp_path / "runs")
    spec = Data(str(root), train="second/train/*.tfrec", val="second/val/*.tfrec", test="second/test/*.tfrec")
    assert open_data(spec, runs_dir=tmp_path / "runs").count("test") == 10


def test_labelled_test_class_folders_give_a_labelled_test_split(digits_folders, tmp_path):
    root = tmp_path / "labelled"
    for split in ("train", "val", "test"):
        shutil.copytree(digits_folders, root / split)
    data = open_data(Data(str(root)), runs_dir=tmp_path / "runs")
    _, labels = collect(data.dataset("test", 16, 64))
    assert data.count("test") == 200 and np.array_equal(labels, data.labels("test"))
