"""Pooled features of frozen backbones: computed once, shared by every trial and worker.

A trial whose backbone is frozen (`fine_tune` frozen, or the first stage of
`probe_then_all`) trains only its head, so the backbone's pooled output for each image is
the same in every epoch and every trial that shares the backbone. `FeatureCache` keeps
those vectors under `runs/<space>/features/`, one float16 `.npy` per key, memory-mapped when
read. The key names everything the vectors depend on: backbone, weights (a file by the
sha256 of its bytes), image size, pooling, preprocessing and decoding, the split's files
(names, sizes, modification times) and labels, and the augmented views; any change is a new
key, never a stale entry. One process computes a key under its lock while the others wait
for it and then read it; entries least recently used go first once the cache passes its
size limit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from search.data.dataset import ImageData
from search.hparams import TrialConfig
from search.models.backbones import BACKBONES
from search.runs import atomic
from search.runs.locks import FolderLock

log = logging.getLogger("search")

# Bump when what an entry holds, or how images become features, changes.
FORMAT = 1
# How images reach the backbone before its own preprocessing (search.data.dataset.decode_image).
DECODING = "decode_image:bilinear,round,uint8"
# A worker waits this long for another to finish computing a key it needs.
LOCK_WAIT_S = 6 * 3600.0
_KEYWORDS = ("imagenet", "noisy-student", "none")


@dataclasses.dataclass(frozen=True)
class FeatureKey:
    """Everything one entry's vectors depend on."""

    backbone: str
    weights: str  # a keyword (with the Keras version that supplies it), or "sha256:<hex>" of the file
    image_size: int
    pooling: str
    preprocessing: str
    data: str  # data_digest of the split
    split: str
    views: int  # 1: the plain images; K: view 0 plain, views 1..K-1 augmented
    augmentation: str
    format: int = FORMAT

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def describe(self) -> str:
        views = f", {self.views} views ({self.augmentation})" if self.views > 1 else ""
        return f"{self.backbone} {self.image_size} px {self.pooling} pool, {self.split}{views}"


_file_digests: dict[tuple[str, int, int], str] = {}
_data_digests: weakref.WeakKeyDictionary[ImageData, dict[str, str]] = weakref.WeakKeyDictionary()


def weights_digest(weights: str, *, seed: int) -> str:
    """What a backbone's weights are: a keyword, or the sha256 of a weights file's bytes.

    Random weights ("none") differ per trial seed, so their features are the seed's alone.
    """
    keyword = weights.strip().lower()
    if keyword == "none":
        return f"none:seed={seed}"
    if keyword in _KEYWORDS:
        return f"{keyword}:keras={keras.__version__}"
    path = Path(weights).expanduser().resolve()
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _file_digests:
        _file_digests[memo] = "sha256:" + atomic.sha256_of(path)
    return _file_digests[memo]


def data_digest(data: ImageData, split: str) -> str:
    """The split's files (name, size, modification time, in order), labels and classes."""
    known = _data_digests.setdefault(data, {})
    if split not in known:
        digest = hashlib.sha256(json.dumps(data.fingerprint, sort_keys=True, default=str).encode())
        for path in data.files(split):
            stat = path.stat()
            digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        digest.update(np.ascontiguousarray(data.labels(split)).tobytes())
        known[split] = digest.hexdigest()
    return known[split]


def key_for(config: TrialConfig, data: ImageData, split: str, *, views: int, seed: int) -> FeatureKey:
    """The key of `config`'s features of `split`; `views` counts only for an augmented train split."""
    augmented = split != "val" and config.augmentation != "none" and views > 1
    return FeatureKey(
        backbone=config.backbone,
        weights=weights_digest(config.weights, seed=seed),
        image_size=int(config.image_size),
        pooling=config.pooling,
        preprocessing=f"{BACKBONES[config.backbone].preprocessing}|{DECODING}",
        data=data_digest(data, split),
        split=split,
        views=views if augmented else 1,
        augmentation=config.augmentation if augmented else "none",
    )


def compute(extractor: keras.Model, data: ImageData, key: FeatureKey, batch_size: int) -> np.ndarray:
    """(views, images, width) float16 features of `key`'s split: view 0 plain, the others augmented."""
    views = []
    for view in range(key.views):
        batches = data.dataset(key.split, key.image_size, batch_size,
                               augmentation=key.augmentation if view else "none", seed=view)
        vectors = np.asarray(extractor.predict(batches, verbose=0), dtype=np.float32)
        if len(vectors) != data.count(key.split):
            raise RuntimeError(f"{len(vectors)} features for {data.count(key.split)} images of the {key.split} split "
                               "(an image no longer decodes?): not cached")
        views.append(vectors.astype(np.float16))
    return np.stack(views)


@dataclasses.dataclass
class FeatureCache:
    """The features folder of one runs folder, with this process's hits and builds."""

    folder: Path
    limit_bytes: int = 20 * 2**30
    lock_wait: float = LOCK_WAIT_S
    hits: int = 0
    builds: int = 0

    def path(self, key: FeatureKey) -> Path:
        return self.folder / f"{key.digest()}.npy"

    def get(self, key: FeatureKey, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The entry of `key`, memory-mapped; made by `make()` under its lock when absent."""
        path = self.path(key)
        found = self._open(path)
        if found is None:
            lock = FolderLock(self.folder / "locks" / f"{path.stem}.lock", doing=f"computing features: {key.describe()}",
                              wait=self.lock_wait)
            with lock:
                found = self._open(path)  # another worker may have made it while this one waited
                if found is None:
                    self._write(path, key, make())
                    self.builds += 1
                    self.evict(keep=path)
                    found = self._open(path)
                    assert found is not None
                    return found
        self.hits += 1
        return found

    def _open(self, path: Path) -> np.ndarray | None:
        try:
            array = np.load(path, mmap_mode="r")
            os.utime(path)  # last use, for the LRU order
            return array
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("feature cache entry %s cannot be read (%s): computing it again", path, e)
            path.unlink(missing_ok=True)
            return None

    def _write(self, path: Path, key: FeatureKey, array: np.ndarray) -> None:
        atomic.write_json(path.with_suffix(".json"), {**dataclasses.asdict(key), "shape": list(array.shape)})
        atomic.save_npy(path, np.asarray(array, dtype=np.float16))  # last: the entry exists from here

    def entries(self) -> list[Path]:
        """Entries, least recently used first."""
        found = []
        for path in self.folder.glob("*.npy") if self.folder.is_dir() else []:
            try:
                found.append((path.stat().st_mtime_ns, path))
            except FileNotFoundError:
                continue  # evicted by another worker just now
        return [path for _, path in sorted(found)]

    def size_bytes(self) -> int:
        return sum(_size(p) for p in self.entries())

    def evict(self, *, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries until the cache fits its limit (never `keep`).

        A process still reading a removed entry keeps its memory map (the file lives on
        until it is closed); one that looks for it next computes it again.
        """
        entries = self.entries()
        total = sum(_size(p) for p in entries)
        removed = []
        for path in entries:
            if total <= self.limit_bytes:
                break
            if path == keep:
                continue
            total -= _size(path)
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            removed.append(path)
        return removed

    def summary(self) -> str:
        """One line for the end of a search."""
        entries = self.entries()
        size = sum(_size(p) for p in entries) / 2**20
        return (f"feature cache {self.folder}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
                f"{size:.1f} MB (limit {self.limit_bytes / 2**30:g} GB); this process: {self.hits} hit(s), "
                f"{self.builds} computed")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def feature_batches(features: Any, labels: np.ndarray, batch_size: int, *, shuffle: bool, seed: int,
                    repeat: bool = False) -> Any:
    """(float32 features, label) batches in the order `ImageData.dataset` yields images.

    Shuffled, the order is the image pipeline's own (the same seeded permutation of the
    indices each epoch), so a head sees the same batches on features as through its backbone.
    With several views, each image's view is drawn anew each epoch.
    """
    import tensorflow as tf

    views, count = int(features.shape[0]), int(features.shape[1])
    table = tf.constant(np.asarray(features))
    targets = tf.constant(np.asarray(labels))
    order = tf.data.Dataset.range(count)
    if shuffle:
        order = order.shuffle(count, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size)

    def plain(index: Any) -> tuple[Any, Any]:
        return tf.cast(tf.gather(table[0], index), tf.float32), tf.gather(targets, index)

    def drawn(index: Any, draw: Any) -> tuple[Any, Any]:
        view = draw[:tf.shape(index)[0]] % views
        return tf.cast(tf.gather_nd(table, tf.stack([view, index], axis=1)), tf.float32), tf.gather(targets, index)

    if views > 1:  # a batch of one view per image, drawn anew each epoch
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(batch_size)
        batches = tf.data.Dataset.zip(order, draws).map(drawn, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        batches = order.map(plain, num_parallel_calls=tf.data.AUTOTUNE)
    # Of unknown length, as the image pipeline is (its ignore_errors): Keras counts an epoch's
    # optimizer steps differently for the two, and Adam's bias correction follows that count.
    batches = batches.ignore_errors()
    if repeat:
        batches = batches.repeat()
    return batches.prefetch(tf.data.AUTOTUNE)
