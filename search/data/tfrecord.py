"""TFRecords in the Petals-to-the-Metal schema: finding the files, counting, parsing.

Labelled records hold ``image`` (JPEG bytes) and ``class`` (int64); test records hold
``image`` and ``id`` (bytes). Every file's schema is checked by its first record, and every
record is read once, by the scan that counts them, so a file cut short is named before
training rather than in the middle of an epoch.

Kaggle ships the competition in four sizes, ``tfrecords-jpeg-{192x192,224x224,331x331,
512x512}/{train,val,test}/``, and names each file by its record count
(``00-331x331-798.tfrec``): the scan sizes its progress by those names and checks them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import tensorflow as tf

from search.console import progress
from search.declare import Data
from search.data.locate import RECORD_SUFFIXES as SUFFIXES
from search.errors import DataError

log = logging.getLogger("search")

# Kaggle's size folders: tfrecords-jpeg-331x331.
_SIZE_FOLDER = re.compile(r"^tfrecords-jpeg-(\d+)x(\d+)$")
# <index>-<size>x<size>-<count>.tfrec (Kaggle's), or <index>-<count>.tfrec.
_NAMED_COUNT = re.compile(r"^\d+-(?:\d+x\d+-)?(\d+)\.tfrec(?:ord)?$", re.IGNORECASE)
_BATCH = 4096  # records parsed at once by the scan


@dataclasses.dataclass
class Records:
    files: list[Path]
    labelled: bool
    counts: list[int]  # records read from each file (all of them, unless a corrupt tail was skipped)
    targets: np.ndarray  # int32 labels, or the string ids of unlabelled records, in file order
    # Indices of records that were counted but could not be parsed (left out, and named, by the scan).
    unreadable: frozenset[int] = frozenset()

    @property
    def count(self) -> int:
        return sum(self.counts)


def named_count(path: Path) -> int | None:
    """The record count a Kaggle-style file name carries (00-331x331-798.tfrec: 798), or None."""
    match = _NAMED_COUNT.match(path.name)
    return int(match[1]) if match else None


def size_of(folder: str) -> int | None:
    """The image size a Kaggle size folder's name says (tfrecords-jpeg-331x331: 331), or None."""
    match = _SIZE_FOLDER.match(folder)
    return int(match[1]) if match and match[1] == match[2] else None


def _nearest(sizes: list[int], wanted: int) -> int:
    """The size nearest `wanted`; between two as near, the larger (downscaling loses less)."""
    return min(sizes, key=lambda size: (abs(size - wanted), -size))


def _patterns(glob: str) -> tuple[list[str], bool]:
    """The globs to try for a split setting, and whether they are our own guesses."""
    if any(c in glob for c in "*?[") or glob.lower().endswith(SUFFIXES):
        return [glob], False
    # A plain name like "train": the Kaggle layout puts it under a resolution folder.
    tried = [f"{glob}/*{s}" for s in SUFFIXES] + [f"**/{glob}/*{s}" for s in SUFFIXES]
    return tried, True


def _matches(root: Path, patterns: list[str]) -> list[Path]:
    """The files of the first pattern that matches any."""
    for pattern in patterns:
        files = sorted(p for p in root.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def choose_size(root: Path, spec: Data) -> tuple[Path, Data, str]:
    """Where to read the records when Kaggle's download holds them in several sizes.

    Returns the folder to read, the spec to read it with, and a line saying which size was
    picked ("" when there was no choice to make). With plain split names ("train") and a root
    holding several size folders, the folder nearest `spec.tfrecord_size` (default: the
    largest) becomes the root. A glob naming a size folder that exists is read as it is; one
    naming an absent size reads the nearest size beside it instead.
    """
    patterns, guessed = _patterns(spec.train)
    if guessed:
        folders = sorted({p.parent.parent for p in _matches(root, patterns)})  # the folders holding train/
        sizes: dict[int, Path] = {}
        for folder in folders:
            size = size_of(folder.name)
            if size is None:
                return root, spec, ""  # not Kaggle's sizes: `find` asks which folder
            sizes[size] = folder
        if len(sizes) < 2 or len({f.parent for f in folders}) != 1:
            return root, spec, ""
        wanted = spec.tfrecord_size or max(sizes)
        picked = _nearest(list(sizes), wanted)
        shown = ", ".join(str(s) for s in sorted(sizes))
        note = (f"TFRecords in {len(sizes)} sizes under {root} ({shown}): reading {sizes[picked].name}/, the "
                f"nearest to image_size {wanted} (Data(tfrecord_size=N) picks another)")
        return sizes[picked], spec, note
    changes: dict[str, Any] = {}  # Data's split globs, by field name
    notes: list[str] = []
    for split in ("train", "val", "test"):
        glob = getattr(spec, split)
        if not glob or _matches(root, [glob]):
            continue
        parts = PurePosixPath(glob).parts
        at = next((i for i, part in enumerate(parts) if size_of(part)), None)
        if at is None or not (parent := root.joinpath(*parts[:at])).is_dir():
            continue
        siblings: dict[int, str] = {}
        for d in parent.iterdir():
            if d.is_dir() and (found := size_of(d.name)):
                siblings[found] = d.name
        if not siblings:
            continue
        sibling = siblings[_nearest(list(siblings), size_of(parts[at]) or 0)]
        changes[split] = PurePosixPath(*parts[:at], sibling, *parts[at + 1:]).as_posix()
        note = f"{parts[at]}/ is not under {parent}: reading {sibling}/, the nearest size there"
        if note not in notes:
            notes.append(note)
    return root, dataclasses.replace(spec, **changes), "; ".join(notes)


def find(root: Path, glob: str, split: str, *, required: bool) -> list[Path]:
    """The record files of one split; [] when an optional split matches nothing."""
    from search.data.folders import has_text_name, shown

    patterns, guessed = _patterns(glob)
    files = _matches(root, patterns)
    if files:
        folders = sorted({str(p.parent.relative_to(root)) for p in files})
        if guessed and len(folders) > 1:
            example = f"{folders[-1]}/*{files[-1].suffix}"
            raise DataError(
                f"TFRecords for {split} are in {len(folders)} folders under {root} "
                f"({', '.join(folders)}); pick one with Data({split}={example!r}) (and the same "
                f"folder for the other splits)."
            )
        for f in files:
            if not has_text_name(f):
                raise DataError(f"TFRecord file {shown(f)} has a name that is not valid UTF-8; rename it.")
        return files
    if required or not guessed:
        raise DataError(
            f"no TFRecord files match Data({split}={glob!r}) under {root} (tried "
            f"{', '.join(patterns)}). Set Data({split}=...) to a glob relative to the data folder, "
            f"e.g. 'tfrecords-jpeg-331x331/{split}/*.tfrec'."
        )
    return []


def _message(error: tf.errors.OpError) -> str:
    # TF prefixes "{{function_node ...}}" and suffixes " [Op:IteratorGetNext] ...": keep the middle.
    message = re.sub(r"\{\{.*?\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message, flags=re.DOTALL).strip().rstrip("'") or type(error).__name__


def _features(path: Path) -> set[str] | None:
    """The feature names of a file's first record; None when it holds none, or none that parses."""
    from google.protobuf.message import DecodeError

    first = next(iter(tf.data.TFRecordDataset(str(path)).take(1)), None)
    try:
        return None if first is None else set(tf.train.Example.FromString(first.numpy()).features.feature)
    except DecodeError:
        return None  # the count below names the file


def _readable(path: Path) -> int:
    """How many records of a file can be read before it breaks."""
    count = 0
    try:
        for _ in tf.data.TFRecordDataset(str(path)):
            count += 1
    except tf.errors.DataLossError:
        pass
    return count


def scan(files: list[Path], split: str, *, skipped: list[tuple[str, str]] | None = None) -> Records:
    """Read every record once: check each file's schema, count its records, collect their
    labels or ids.

    A file cut short or corrupt (DataLossError) raises DataError naming it; with a `skipped`
    list, its readable records are kept instead and (file, reason) is added to the list.
    """
    label: str | None = None  # "class" or "id", as the first file with records says
    first_file: Path | None = None
    for f in files:
        try:
            keys = _features(f)
        except tf.errors.DataLossError:
            keys = None  # its first record is already broken: the count below names it
        if keys is None:
            continue
        if "image" not in keys or not keys & {"class", "id"}:
            raise DataError(
                f"{split} records in {f} have features {sorted(keys)}; expected 'image' (JPEG bytes) with "
                f"'class' (int64) or, for test records, 'id' (bytes)."
            )
        key = "class" if "class" in keys else "id"
        if label is None:
            label, first_file = key, f
        elif key != label:
            raise DataError(
                f"{split} records in {f} carry {key!r} (features {sorted(keys)}) where those in {first_file} carry "
                f"{label!r}; a split's files share one schema: move {f.name} to the split it belongs to."
            )
    if label is None:
        raise DataError(f"the {split} TFRecord files ({files[0].parent}) hold no readable records.")
    labelled = label == "class"
    spec = {label: tf.io.FixedLenFeature([], tf.int64 if labelled else tf.string)}

    def parsed(f: Path, limit: int | None) -> tf.data.Dataset:
        records = tf.data.TFRecordDataset(str(f))
        records = records if limit is None else records.take(limit)
        return records.batch(_BATCH).map(lambda r: tf.io.parse_example(r, spec)[label])

    counts: list[int] = []
    parts: list[np.ndarray] = []
    broken: set[Path] = set()
    unreadable: set[int] = set()

    def one_by_one(f: Path, limit: int) -> np.ndarray:
        """A file's labels or ids record by record, those that do not parse left out and named."""
        values = []
        for k, record in enumerate(tf.data.TFRecordDataset(str(f)).take(limit)):
            try:
                values.append(tf.io.parse_single_example(record, spec)[label].numpy())
            except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
                values.append(-1 if labelled else b"")
                unreadable.add(sum(counts) + k)
                skipped.append((f.name, f"record {k} is not an Example with {label!r}; it is left out"))  # type: ignore[union-attr]
        return np.array(values, np.int64 if labelled else object)

    def batches() -> Iterator[np.ndarray]:
        for f in files:
            found: list[np.ndarray] = []
            limit: int | None = None
            try:
                try:
                    for batch in parsed(f, None):
                        found.append(batch.numpy())
                        yield found[-1]
                except tf.errors.DataLossError as e:
                    limit = _readable(f)
                    broken_at = f"truncated or corrupt after its first {limit} records ({_message(e)})"
                    if skipped is None:
                        raise DataError(f"TFRecord file {f} is {broken_at}: download it again, or remove it.") from None
                    skipped.append((f.name, f"{broken_at}: the rest of the file is left out"))
                    broken.add(f)
                    found = [b.numpy() for b in parsed(f, limit)]
            # A record that is not an Example with the first one's features. (TF's message quotes
            # the record's bytes, and fails to decode them as text, hence UnicodeDecodeError.)
            except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
                if skipped is None:
                    raise DataError(
                        f"a {split} record in {f} is not a tf.train.Example with {label!r}, as every record of the "
                        f"split must be: re-create or re-download the file."
                    ) from None
                found = [one_by_one(f, _readable(f) if limit is None else limit)]
            counts.append(sum(len(b) for b in found))
            parts.extend(found)

    named = [named_count(f) for f in files]
    total = None if None in named else sum(n or 0 for n in named)
    for _ in progress(batches(), f"reading {split} records", total=total, unit="record", size=len):
        pass
    for f, said, found in zip(files, named, counts):
        if said is not None and said != found and f not in broken:
            log.warning("%s: its name says %d records, it holds %d; using %d.", f, said, found, found)
    targets = np.concatenate(parts) if parts else np.zeros([0], np.int64)
    return Records(files, labelled, counts, targets.astype(np.int32) if labelled else targets, frozenset(unreadable))


def numbered(found: Records) -> tf.data.Dataset:
    """(index in file order, record) of every record the scan counted, file after file."""
    paths = [str(f) for f in found.files]
    starts = np.cumsum([0, *found.counts[:-1]]).astype(np.int64)
    counts = np.asarray(found.counts, np.int64)

    def one_file(path: tf.Tensor, start: tf.Tensor, count: tf.Tensor) -> tf.data.Dataset:
        # take(count): a file with a corrupt tail is read up to where the scan stopped.
        return tf.data.TFRecordDataset(path).take(count).enumerate(start)

    return tf.data.Dataset.from_tensor_slices((paths, starts, counts)).flat_map(one_file)


def images(found: Records, decode: Callable[[tf.Tensor], tf.Tensor]) -> tf.data.Dataset:
    """(index in file order, decode(image bytes)) of every record, in file order (the order of
    `found.targets`). An index lets a caller that drops undecodable records know which.

    Parsing and decoding share one parallel map: a second map would pass every record's
    bytes through another pipeline stage for nothing."""
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}

    def parse(index: tf.Tensor, record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, decode(tf.io.parse_single_example(record, spec)["image"])

    return numbered(found).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# A shuffled pass reads this many files at once, a record from each in turn.
_FILES_AT_ONCE = 64


def indexed(
    found: Records,
) -> tuple[Callable[[tf.data.Dataset, bool, int], tf.data.Dataset], Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]]:
    """`search.data.pipeline.Source`'s `items` and `unpack`: (index in file order, record) items,
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

    def items(_: tf.data.Dataset, shuffle: bool, seed: int) -> tf.data.Dataset:  # no order by index: see above
        files = tf.data.Dataset.from_tensor_slices((paths, starts))
        if not shuffle:
            return files.flat_map(numbered)
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        return files.interleave(numbered, cycle_length=min(len(paths), _FILES_AT_ONCE))

    def unpack(index: tf.Tensor, records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, tf.io.parse_example(records, spec)["image"]

    return items, unpack


def open_records(root: Path, spec: Data) -> tuple[Path, list[str], dict[str, Records], str]:
    """Find and scan the splits' record files; return the folder read (a size folder of Kaggle's
    download, when it holds several), the class names, the scans, and a line saying which size
    was picked ("" when there was no choice)."""
    root, spec, note = choose_size(root, spec)
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
    return root, class_names, scans, note
