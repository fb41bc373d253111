"""TFRecords in the Petals-to-the-Metal schema: finding the files, counting, parsing.

Labelled records hold ``image`` (JPEG bytes) and ``class`` (int64); test records hold
``image`` and ``id`` (bytes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from search.declare import Data
from search.errors import DataError

SUFFIXES = (".tfrec", ".tfrecord")


@dataclasses.dataclass
class Records:
    files: list[Path]
    labelled: bool
    counts: list[int]  # records in each file
    targets: np.ndarray  # int32 labels, or the string ids of unlabelled records, in file order

    @property
    def count(self) -> int:
        return sum(self.counts)


def has_records(root: Path, depth: int = 4) -> bool:
    """Whether any *.tfrec(ord) file lies within `depth` levels under root."""
    level = [root]
    for _ in range(depth):
        next_level = []
        for folder in level:
            for entry in folder.iterdir():
                if entry.is_file() and entry.suffix.lower() in SUFFIXES:
                    return True
                if entry.is_dir() and not entry.name.startswith((".", "__")):
                    next_level.append(entry)
        level = next_level
    return False


def _patterns(glob: str) -> tuple[list[str], bool]:
    """The globs to try for a split setting, and whether they are our own guesses."""
    if any(c in glob for c in "*?[") or glob.lower().endswith(SUFFIXES):
        return [glob], False
    # A plain name like "train": the Kaggle layout puts it under a resolution folder.
    tried = [f"{glob}/*{s}" for s in SUFFIXES] + [f"**/{glob}/*{s}" for s in SUFFIXES]
    return tried, True


def find(root: Path, glob: str, split: str, *, required: bool) -> list[Path]:
    """The record files of one split; [] when an optional split matches nothing."""
    patterns, guessed = _patterns(glob)
    for pattern in patterns:
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        if not files:
            continue
        folders = sorted({str(p.parent.relative_to(root)) for p in files})
        if guessed and len(folders) > 1:
            example = f"{folders[-1]}/*{files[-1].suffix}"
            raise DataError(
                f"TFRecords for {split} are in {len(folders)} folders under {root} "
                f"({', '.join(folders)}); pick one with Data({split}={example!r}) (and the same "
                f"folder for the other splits)."
            )
        return files
    if required or not guessed:
        raise DataError(
            f"no TFRecord files match Data({split}={glob!r}) under {root} (tried "
            f"{', '.join(patterns)}). Set Data({split}=...) to a glob relative to the data folder, "
            f"e.g. 'tfrecords-jpeg-331x331/{split}/*.tfrec'."
        )
    return []


def scan(files: list[Path], split: str) -> Records:
    """Read every record once: count each file's records and collect their labels or ids."""
    try:
        first = next(iter(tf.data.TFRecordDataset([str(f) for f in files]).take(1)), None)
        if first is None:
            raise DataError(f"the {split} TFRecord files ({files[0].parent}) hold no records.")
        keys = set(tf.train.Example.FromString(first.numpy()).features.feature)
        if "image" not in keys or not keys & {"class", "id"}:
            raise DataError(
                f"{split} records in {files[0]} have features {sorted(keys)}; expected 'image' "
                f"(JPEG bytes) with 'class' (int64) or, for test records, 'id' (bytes)."
            )
        labelled = "class" in keys
        key = "class" if labelled else "id"
        spec = {key: tf.io.FixedLenFeature([], tf.int64 if labelled else tf.string)}
        counts, parts = [], []
        for f in files:
            raw = tf.data.TFRecordDataset(str(f))
            found = [b.numpy() for b in raw.batch(4096).map(lambda r: tf.io.parse_example(r, spec)[key])]
            counts.append(sum(len(b) for b in found))
            parts += found
    except tf.errors.OpError as e:
        raise DataError(
            f"the {split} TFRecord files under {files[0].parent} cannot be read ({e.message.strip()}); "
            f"re-download or re-create them."
        ) from None
    targets = np.concatenate(parts) if parts else np.zeros([0], np.int64)
    return Records(files, labelled, counts, targets.astype(np.int32) if labelled else targets)


def images(found: Records, decode: Callable[[tf.Tensor], tf.Tensor]) -> tf.data.Dataset:
    """decode(image bytes) of every record, in file order (the order of `found.targets`).

    Parsing and decoding share one parallel map: a second map would pass every record's
    bytes through another pipeline stage for nothing."""
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}

    def parse(record: tf.Tensor) -> tf.Tensor:
        return decode(tf.io.parse_single_example(record, spec)["image"])

    raw = tf.data.TFRecordDataset([str(f) for f in found.files])
    return raw.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# A shuffled pass reads this many files at once, a record from each in turn.
_FILES_AT_ONCE = 64


def indexed(
    found: Records,
) -> tuple[Callable[[tf.data.Dataset, bool, int], tf.data.Dataset], Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]]:
    """`search.pipeline.Source`'s `items` and `unpack`: (index in file order, record) items,
    unpacked a batch at a time into (indices, image bytes).

    Records cannot be read by index. A shuffled pass takes the files in a new order each
    time and reads up to 64 of them at once, a record from each in turn, so files that each
    hold one class still mix; an unshuffled pass reads them in file order. (Only the first
    pass reads records when the images are kept in memory; the passes after it are fully
    shuffled. A shuffle buffer of records here cost the first pass ~10% in a probe.)
    """
    paths = [str(f) for f in found.files]
    starts = np.cumsum([0, *found.counts[:-1]]).astype(np.int64)
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}

    def numbered(path: tf.Tensor, start: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path).enumerate(start)

    def items(order: tf.data.Dataset, shuffle: bool, seed: int) -> tf.data.Dataset:  # `order` unused
        files = tf.data.Dataset.from_tensor_slices((paths, starts))
        if not shuffle:
            return files.flat_map(numbered)
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        return files.interleave(numbered, cycle_length=min(len(paths), _FILES_AT_ONCE))

    def unpack(index: tf.Tensor, records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, tf.io.parse_example(records, spec)["image"]

    return items, unpack


def open_records(root: Path, spec: Data) -> tuple[list[str], dict[str, Records]]:
    """Find and scan the splits' record files; return the class names and the scans."""
    found = {
        "train": find(root, spec.train, "train", required=True),
        "val": find(root, spec.val, "val", required=True),
    }
    if spec.test:
        test = find(root, spec.test, "test", required=False)
        if test:
            found["test"] = test
    scans = {split: scan(files, split) for split, files in found.items()}
    for split in ("train", "val"):
        if not scans[split].labelled:
            raise DataError(
                f"{split} records under {found[split][0].parent} have no 'class' label; point "
                f"Data({split}=...) at labelled records."
            )
    labels = np.concatenate([scans["train"].targets, scans["val"].targets])
    if labels.size == 0 or labels.min() < 0:
        raise DataError(f"TFRecords under {root} hold no usable (non-negative) class labels.")
    num_classes = int(labels.max()) + 1
    if spec.class_names is not None:
        if len(spec.class_names) < num_classes:
            raise DataError(
                f"Data(class_names=...) names {len(spec.class_names)} classes but the records use "
                f"labels up to {num_classes - 1}; give one name per label."
            )
        class_names = [str(n) for n in spec.class_names]
    else:
        class_names = [str(i) for i in range(num_classes)]
    return class_names, scans
