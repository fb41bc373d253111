"""Small real datasets that need no download, written once as PNG class folders.

``builtin:digits`` is scikit-learn's 8x8 handwritten digits (as ``folders``);
``builtin:fashion-mnist`` is Debian's dataset-fashion-mnist package (as ``split_folders``:
train from the training set, val from t10k). ``?per_class=N`` keeps the first N per class.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from search.errors import DataError, did_you_mean
from search.runs.layout import RunsDir

PREFIX = "builtin:"
NAMES = ("digits", "fashion-mnist")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
)  # fmt: skip


def is_builtin(path: str) -> bool:
    return path.startswith(PREFIX)


def _parse(path: str) -> tuple[str, int | None]:
    name, _, query = path[len(PREFIX) :].partition("?")
    if name not in NAMES:
        raise DataError(
            f"--data {path!r}: unknown builtin dataset {name!r}.{did_you_mean(name, NAMES)} "
            f"Builtins: {', '.join(PREFIX + n for n in NAMES)}."
        )
    per_class = None
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key != "per_class" or not value.isdigit() or int(value) < 1:
            raise DataError(
                f"--data {path!r}: bad option {item!r}; the only option is per_class=N (N >= 1), "
                f"e.g. {PREFIX}{name}?per_class=100."
            )
        per_class = int(value)
    return name, per_class


def materialise(path: str, runs_dir: Path) -> Path:
    """Write the builtin dataset under runs_dir/data once and return its folder."""
    name, per_class = _parse(path)
    target = RunsDir(runs_dir).builtin_data / (name if per_class is None else f"{name}-per_class-{per_class}")
    if target.is_dir():
        return target
    if name == "fashion-mnist" and not FASHION_DIR.is_dir():
        raise DataError(
            f"--data {path!r}: {FASHION_DIR} is missing. Install it with "
            f"`apt-get install dataset-fashion-mnist`, or pass another dataset with --data PATH."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written in a temp folder and renamed, so an interrupted write is never mistaken for data.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        splits = _digits() if name == "digits" else _fashion()
        for split, images, labels, classes in splits:
            _write_pngs(tmp / split if split else tmp, images, labels, classes, per_class)
        os.replace(tmp, target)
    except OSError:
        if target.is_dir():  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


Split = tuple[str, np.ndarray, np.ndarray, tuple[str, ...]]


def _digits() -> Iterator[Split]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 16 gray levels (0..16) stretched to 0..255.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    yield "", images, digits.target, tuple(str(i) for i in range(10))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion() -> Iterator[Split]:
    for split, prefix in (("train", "train"), ("val", "t10k")):
        images = _read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        yield split, images, labels, FASHION_CLASSES


def _write_pngs(
    root: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], per_class: int | None
) -> None:
    from PIL import Image

    for label, cls in enumerate(classes):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        indices = np.flatnonzero(labels == label)[:per_class]
        for i in indices:
            Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
