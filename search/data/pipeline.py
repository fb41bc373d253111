"""Batches of one split: the first epoch decodes into memory, later epochs gather from it.

The first epoch over a split streams its images through a parallel decode, a batch at a
time in that epoch's order, and writes each decoded image into a `Store` (uint8, on the
CPU) at the image's index. Once every image is stored, each epoch, of this trial and of
every later trial at that image size, gathers its batches straight from the store in a
fresh permutation of all the indices.

tf.data's `cache()` followed by a full `shuffle()` did the same job with two costs: the
shuffle buffer had to fill with every decoded image before epoch 1 gave its first batch
(0.78x the speed of `keras.utils.image_dataset_from_directory` in `bench/input_pipeline.py`),
and it held a second copy of the images. Here epoch 1 streams and the images are held once.

Both pipelines are built once; each pass picks one as it begins. Building them inside the
pass (a `flat_map` over permutations) cost a pass tens of milliseconds of set-up, and a
per-image decode stage before batching ran 0.6-0.9x as fast as decoding a batch in one map.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

# Images of a batch decoded at once; batches are also decoded in parallel with each other.
_IMAGES_AT_ONCE = 32


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a split's images come from, and how they decode.

    `items(order, shuffle, seed)` turns a pass's order of indices into per-image items: the
    indices themselves where images can be read by index (folders), or a source's own order
    where they cannot (TFRecords), each item carrying its index. `unpack` turns a batch of
    items into (the indices, one string per image); `decode` turns one string into a uint8
    image.
    """

    targets: np.ndarray  # each index's label, or string id
    image_size: int
    items: Callable[[tf.data.Dataset, bool, int], tf.data.Dataset]
    unpack: Callable[..., tuple[tf.Tensor, tf.Tensor]]
    decode: Callable[[tf.Tensor], tf.Tensor]


def available_memory() -> int | None:
    """Bytes the system could give this process now (Linux's MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class Store:
    """The decoded images of one split at one size, by index; the first epoch fills it."""

    @staticmethod
    def bytes_for(count: int, image_size: int) -> int:
        return count * image_size * image_size * 3

    def __init__(self, count: int, image_size: int) -> None:
        def create() -> tuple[tf.Variable, tf.Variable]:
            with tf.init_scope(), tf.device("/CPU:0"):  # where the input pipeline runs
                images = tf.Variable(tf.zeros([count, image_size, image_size, 3], tf.uint8), trainable=False)
                return images, tf.Variable(tf.zeros([count], tf.bool), trainable=False)

        if tf.distribute.has_strategy():
            # Inside a strategy's scope a variable is mirrored onto every device; a strategy
            # scope belongs to its thread, so another thread creates a plain one on the CPU.
            with ThreadPoolExecutor(1) as thread:
                self._images, self._filled = thread.submit(create).result()
        else:
            self._images, self._filled = create()

    def complete(self) -> tf.Tensor:
        """Whether every index has been written."""
        return tf.reduce_all(self._filled)

    def write(self, index: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """Store a batch of images at their indices; returns the images once stored."""
        # Sparse reads and writes only: a dense read would copy the whole store.
        stored = self._images.scatter_update(tf.IndexedSlices(images, index))
        with tf.control_dependencies([stored]):
            marked = self._filled.scatter_update(tf.IndexedSlices(tf.ones_like(index, tf.bool), index))
        with tf.control_dependencies([marked]):
            return tf.identity(images)

    def read(self, index: tf.Tensor) -> tf.Tensor:
        return tf.gather(self._images, index)


class Pipeline:
    """Batches of one split at one size, decoding the first pass into `store` (if any).

    Its decoding and reading functions are traced once and shared by every dataset it
    builds, and its unshuffled datasets are built once: each trial asks for a training and a
    validation dataset, and tracing them anew cost a trial ~80 ms.
    """

    def __init__(self, source: Source, store: Store | None) -> None:
        self.source, self.store = source, store
        self._targets = tf.constant(source.targets)
        self._image = tf.TensorSpec([source.image_size, source.image_size, 3], tf.uint8)
        self._decode = tf.function(self._decode_batch)
        self._read = tf.function(self._read_batch)
        self._in_order: dict[int, tf.data.Dataset] = {}  # unshuffled datasets, by batch size

    def batches(self, batch_size: int, *, shuffle: bool, seed: int) -> tf.data.Dataset:
        """(float32 [B, size, size, 3] pixels in 0..255, targets) batches, one epoch per pass.

        Without a store every pass decodes. A batch holding an image that fails to decode
        is logged and skipped (`open_data` has checked every image file before this).
        """
        if not shuffle:  # every trial validates on the same one
            if batch_size not in self._in_order:
                self._in_order[batch_size] = self._build(batch_size, shuffle=False, seed=0)
            return self._in_order[batch_size]
        return self._build(batch_size, shuffle=True, seed=seed)

    def _build(self, batch_size: int, *, shuffle: bool, seed: int) -> tf.data.Dataset:
        count = len(self.source.targets)
        order = tf.data.Dataset.range(count)
        if shuffle:  # indices, not images: a full shuffle costs 8 bytes an image
            order = order.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        decoded = self.source.items(order, shuffle, seed).batch(batch_size)
        decoded = decoded.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
        if self.store is None:
            return decoded
        stored = order.batch(batch_size).map(self._read, num_parallel_calls=tf.data.AUTOTUNE)
        store = self.store

        # Decided as each pass begins: a pass cut short leaves the store incomplete, and the
        # next pass decodes again. (Not converted by AutoGraph, which took 15% of a build.)
        @tf.autograph.experimental.do_not_convert
        def choose(_: tf.Tensor) -> tf.data.Dataset:
            return tf.cond(store.complete(), lambda: stored, lambda: decoded)

        return tf.data.Dataset.range(1).flat_map(choose)

    def _decode_batch(self, *items: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        index, strings = self.source.unpack(*items)
        images = tf.map_fn(
            self.source.decode, strings, fn_output_signature=self._image, parallel_iterations=_IMAGES_AT_ONCE
        )
        if self.store is not None:
            images = self.store.write(index, images)
        return tf.cast(images, tf.float32), tf.gather(self._targets, index)

    def _read_batch(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        assert self.store is not None  # only built with a store
        return tf.cast(self.store.read(index), tf.float32), tf.gather(self._targets, index)
