"""Datasets on disk (class folders, a Kaggle zip, TFRecords, builtins) -> tf.data pipelines.

`open_data` finds and checks everything once, up front, and raises `DataError` with one
line naming the problem and the fix; `ImageData.dataset` then builds the pipelines every
trial uses (`search.data.pipeline`), keeping decoded images in memory so that only the first
epoch of a split at a given size decodes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from search.data import archive, builtin, folds as kfold, locate, pipeline, tfrecord
from search.data.folders import (
    UNLABELLED,
    check_images,
    checks_file,
    content_hash,
    converted_folder,
    load_checks,
    require_classes,
    require_images,
    save_checks,
    scan_folders,
    shown,
)
from search.data.augment import augmentation as make_augmentation
from search.declare import Data
from search.errors import DataError, did_you_mean

log = logging.getLogger("search")

SPLITS = ("train", "val", "test")
# Both labelled splits as one, shuffled together: what `search.ensemble --refit` trains on.
TRAIN_VAL = "train+val"
# Decoded images are kept in memory when they take at most this share of the free memory.
_MEMORY_SHARE = 0.5


@dataclasses.dataclass
class _Split:
    files: list[Path]  # image files, or TFRecord files when `records` is set
    targets: np.ndarray  # int32 labels, or the string ids of an unlabelled split
    labelled: bool
    records: tfrecord.Records | None = None
    # An image only Pillow reads -> the PNG converted from it, read in its place.
    substitutes: dict[Path, Path] = dataclasses.field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.records.count if self.records else len(self.files)

    def read_from(self) -> list[Path]:
        """The file each image is read from, in `files` order."""
        return [self.substitutes.get(f, f) for f in self.files]


def _combined(first: _Split, second: _Split) -> _Split:
    """Two labelled splits as one: files, labels and (for TFRecords) records end to end."""
    records = None
    if first.records is not None and second.records is not None:
        records = tfrecord.Records(first.records.files + second.records.files, True,
                                   first.records.counts + second.records.counts,
                                   np.concatenate([first.records.targets, second.records.targets]))
    return _Split(first.files + second.files, np.concatenate([first.targets, second.targets]), True, records,
                  {**first.substitutes, **second.substitutes})


def _subset(part: _Split, indices: np.ndarray) -> _Split:
    """Some images of a split of image files, in `indices` order."""
    files = [part.files[i] for i in indices]
    return _Split(files, part.targets[indices], part.labelled, None,
                  {f: part.substitutes[f] for f in files if f in part.substitutes})


class ImageData:
    """An opened dataset: class names, split sizes, and tf.data pipelines over them."""

    def __init__(
        self,
        *,
        layout: str,
        root: Path,
        class_names: list[str],
        splits: dict[str, _Split],
        skipped: list[tuple[str, str]],
        cache: bool,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.layout = layout
        self.notes = notes  # lines for the console about choices made (which TFRecord size)
        self.root = root
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.skipped = skipped
        self._splits = splits
        self._combined: dict[str, _Split] = {}
        self._cache_enabled = cache
        self._pipelines: dict[tuple[str, int], pipeline.Pipeline] = {}
        hashed = [(f, f.stat().st_size) for s in splits.values() for f in s.files]
        self.fingerprint: dict = {
            "layout": layout,
            "root": str(root),
            "classes": list(class_names),
            "num_classes": self.num_classes,
            "counts": {name: split.count for name, split in splits.items()},
            "labelled": {name: split.labelled for name, split in splits.items()},
            "skipped": len(skipped),
            "content_hash": content_hash(root, hashed),
        }

    def make_folds(self, folds: int, seed: int) -> list[tuple[str, str, np.ndarray]]:
        """Split train+val into `folds` stratified folds (`search.data.folds`); returns each
        fold's (training, held-out) split names, usable wherever a split name is, and the
        train+val indices of its held-out images."""
        labels = self.labels(TRAIN_VAL)
        kfold.check(folds, labels, self.class_names, layout=self.layout)
        fold_of = kfold.assign(labels, folds, seed)
        names = []
        for fold in range(folds):
            train, held = kfold.split_names(fold, folds, seed)
            self._combined[train] = _subset(self._split(TRAIN_VAL), np.flatnonzero(fold_of != fold))
            self._combined[held] = _subset(self._split(TRAIN_VAL), np.flatnonzero(fold_of == fold))
            names.append((train, held, np.flatnonzero(fold_of == fold)))
        return names

    def has_split(self, split: str) -> bool:
        """Whether the dataset has this split ("train", "val" or "test")."""
        return split in self._splits

    def count(self, split: str) -> int:
        """Number of images in a split (0 when the split is absent)."""
        known = split in self._splits or split in self._combined or split == TRAIN_VAL
        return self._split(split).count if known else 0

    def files(self, split: str) -> list[Path]:
        """The files a split is read from: its images in `labels` order, or its TFRecord files."""
        return self._split(split).read_from()

    def labels(self, split: str) -> np.ndarray:
        """Integer labels in the order `dataset(split, shuffle=False)` yields them."""
        part = self._split(split)
        if not part.labelled:
            raise DataError(f"the {split} split has no labels (it yields image ids instead).")
        return part.targets.copy()

    def dataset(
        self,
        split: str,
        image_size: int,
        batch_size: int,
        *,
        augmentation: str = "none",
        shuffle: bool = False,
        seed: int = 0,
        repeat: bool = False,
    ) -> tf.data.Dataset:
        """Batches of (float32 [B, size, size, 3] pixels in 0..255, int32 labels or string ids)."""
        self._split(split)  # names an unknown split clearly
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"dataset({name}={value!r}) must be a whole number >= 1.")
        layers = make_augmentation(augmentation, image_size, seed=seed)
        ds = self._pipeline(split, image_size).batches(batch_size, shuffle=shuffle, seed=seed)
        if repeat:
            ds = ds.repeat()
        if layers is not None:
            ds = ds.map(
                lambda x, y: (layers(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
            )
        return ds.prefetch(tf.data.AUTOTUNE)

    def describe(self) -> str:
        """One or two lines for the console: layout, classes, counts, skipped files."""
        names = ", ".join(self.class_names[:6]) + (", ..." if self.num_classes > 6 else "")
        counts = ", ".join(
            f"{name} {s.count}" + ("" if s.labelled else " (unlabelled)")
            for name, s in self._splits.items()
        )
        text = f"{self.layout} data at {self.root}: {self.num_classes} classes ({names}); {counts}"
        text += "".join(f"\n  {note}" for note in self.notes)
        if self.skipped:
            listed = "; ".join(f"{f}: {reason}" for f, reason in self.skipped[:3])
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            text += f"\n  skipped {len(self.skipped)} file(s): {listed}{more}"
        return text

    def __repr__(self) -> str:
        return f"ImageData({self.describe().splitlines()[0]})"

    def _split(self, split: str) -> _Split:
        if split == TRAIN_VAL and split not in self._combined:
            self._combined[split] = _combined(self._split("train"), self._split("val"))
        if split in self._combined:
            return self._combined[split]
        if split not in self._splits:
            have = ", ".join(self._splits)
            raise DataError(
                f"the dataset has no {split!r} split.{did_you_mean(split, SPLITS)} It has: {have}."
            )
        return self._splits[split]

    def _pipeline(self, split: str, image_size: int) -> pipeline.Pipeline:
        """The pipeline of a split at one size, with the in-memory store of its decoded images."""
        key = (split, image_size)
        if key not in self._pipelines:
            part = self._split(split)
            store = pipeline.Store(part.count, image_size) if self._keeps(split, image_size) else None
            self._pipelines[key] = pipeline.Pipeline(self._source(part, image_size), store)
        return self._pipelines[key]

    def _keeps(self, split: str, image_size: int) -> bool:
        """Whether to keep a split's decoded images in memory: when enabled and they fit."""
        if not self._cache_enabled:
            return False
        needed = pipeline.Store.bytes_for(self._split(split).count, image_size)
        free = pipeline.available_memory()
        if free is None or needed <= _MEMORY_SHARE * free:
            return True
        log.warning(
            "data: not keeping the %s split's decoded images in memory at %d px (%.1f GB, with %.1f GB "
            "free): every epoch decodes them again. A smaller image_size fits; Data(cache=False) "
            "silences this.", split, image_size, needed / 2**30, free / 2**30,
        )
        return False

    @staticmethod
    def _source(part: _Split, image_size: int) -> pipeline.Source:
        """Where a split's images are read from, and how they decode."""
        if part.records is not None:
            items, unpack_record = tfrecord.indexed(part.records)
            decode = functools.partial(decode_image, image_size=image_size)
            return pipeline.Source(part.targets, image_size, items, unpack_record, decode)
        paths = tf.constant([str(f) for f in part.read_from()])

        def unpack(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return index, tf.gather(paths, index)

        def read_and_decode(path: tf.Tensor) -> tf.Tensor:  # one step, run a batch at a time
            return decode_image(tf.io.read_file(path), image_size)

        return pipeline.Source(part.targets, image_size, lambda order, *_: order, unpack, read_and_decode)


def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image bytes -> (size, size, 3) uint8 RGB, exactly as training sees them.

    Prediction, feature maps and export use this too, so a served model gets the pixels it
    was trained on. uint8 because the in-memory store holds a quarter of float32's bytes.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    image = tf.image.resize(image, [image_size, image_size])
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def open_data(
    spec: Data, *, runs_dir: Path, seed: int = 0, path_override: str | None = None
) -> ImageData:
    """Find, check and index the dataset `spec` declares (or `path_override`, from --data).

    Raises DataError naming the problem and the fix. Nothing is written under `runs_dir`
    before the checks pass, except the extraction of a zip or builtin dataset.
    """
    runs_dir = Path(runs_dir)
    path = path_override or spec.path
    if not path:
        raise DataError(
            "no dataset given: set Data(path=...) in the space file or pass --data PATH "
            "(try --data builtin:digits)."
        )
    if builtin.is_builtin(path):
        root = builtin.materialise(path, runs_dir)
    else:
        root = locate.resolve(path, spec)
        if root.is_file():
            root = archive.extract(root, runs_dir)
    layout, root = locate.detect(root, spec)
    skipped: list[tuple[str, str]] = []
    notes: tuple[str, ...] = ()
    if layout == "tfrecord":
        root, class_names, splits, note = _open_tfrecord(root, spec)
        require_classes(root, class_names)
        notes = (note,) if note else ()
    else:
        groups = scan_folders(root, spec, layout)
        known = load_checks(checks_file(root, runs_dir))
        files = [f for classes in groups.values() for fs in classes.values() for f in fs]
        checked = check_images(files, root, known, max_pixels=spec.max_pixels, converted=converted_folder(runs_dir))
        bad = checked.bad
        skipped = [(shown(_rel(f, root)), reason) for f, reason in sorted(bad.items())]
        for where, classes in groups.items():
            for name, fs in classes.items():
                classes[name] = [f for f in fs if f not in bad]
            if where != spec.test:
                require_images(root / where if where else root, classes, bad)
                require_classes(root / where if where else root, list(classes))
        class_names, splits = _make_splits(root, spec, layout, groups, seed)
        for split in splits.values():
            split.substitutes = {f: checked.substitutes[f] for f in split.files if f in checked.substitutes}
        save_checks(checks_file(root, runs_dir), checked.entries)
    data = ImageData(
        layout=layout,
        root=root,
        class_names=class_names,
        splits=splits,
        skipped=skipped,
        cache=spec.cache,
        notes=notes,
    )
    log.info("data: %s", data.describe())
    return data


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _make_splits(
    root: Path, spec: Data, layout: str, groups: dict[str, dict[str, list[Path]]], seed: int
) -> tuple[list[str], dict[str, _Split]]:
    rng = np.random.default_rng(seed)
    if layout == "folders":
        classes = groups[""]
        class_names = list(classes)
        train, val = [], []
        for label, (name, files) in enumerate(classes.items()):
            if len(files) < 2:
                raise DataError(
                    f"class {name!r} has {len(files)} readable image(s) in {root / name}; the "
                    f"'folders' layout needs at least 2 per class to split off val_fraction."
                )
            n_val = min(len(files) - 1, max(1, round(len(files) * spec.val_fraction)))
            picked = set(rng.permutation(len(files))[:n_val].tolist())
            val += [(f, label) for i, f in enumerate(files) if i in picked]
            train += [(f, label) for i, f in enumerate(files) if i not in picked]
        pairs = {"train": train, "val": val}
    else:
        class_names = list(groups[spec.train])
        index = {name: label for label, name in enumerate(class_names)}
        pairs = {
            split: [(f, index[name]) for name, files in groups[where].items() for f in files]
            for split, where in (("train", spec.train), ("val", spec.val))
        }
    # Class-sorted order would make any bounded shuffle buffer hold one class at a time.
    pairs["train"] = [pairs["train"][i] for i in rng.permutation(len(pairs["train"]))]
    splits = {
        split: _Split([f for f, _ in items], np.array([y for _, y in items], np.int32), True)
        for split, items in pairs.items()
    }
    if spec.test in groups and layout == "split_folders":
        test = groups[spec.test]
        if UNLABELLED in test:
            files = test[UNLABELLED]
            splits["test"] = _Split(files, np.array([_rel(f, root) for f in files]), False)
        else:
            items = [(f, class_names.index(n)) for n, fs in test.items() for f in fs]
            splits["test"] = _Split([f for f, _ in items], np.array([y for _, y in items], np.int32), True)
    return class_names, splits


def _open_tfrecord(root: Path, spec: Data) -> tuple[Path, list[str], dict[str, _Split], str]:
    root, class_names, scans, note = tfrecord.open_records(root, spec)
    splits = {
        split: _Split(scan.files, scan.targets, scan.labelled, records=scan)
        for split, scan in scans.items()
    }
    return root, class_names, splits, note
