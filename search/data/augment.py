"""Augmentation policies, as Keras preprocessing layers, and the test-time views of each.

`POLICIES` is the vocabulary a space's `augmentation` takes; adding a policy is one entry
here and its name in `search.data.policies` (and, if Keras has no layer for it, the layer).
They run in the input pipeline on float batches of raw 0..255 pixels, after batching and
after the images kept in memory are read, so every epoch sees fresh draws of them. Each
policy also lists the deterministic views of an image that test-time augmentation averages
over (`tta_views`): the image itself, then the flips, turns and zooms its training draws
were made of, most typical first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from search.data.policies import DESCRIPTIONS
from search.errors import DataError, did_you_mean



@keras.saving.register_keras_serializable(package="search")
class RandomRot90Transpose(keras.layers.Layer):
    """Per image: rotate by 90, 180 or 270 degrees (each with `rot_prob`), then transpose
    with `transpose_prob`. Square images only; a no-op unless training."""

    def __init__(
        self,
        rot_prob: float = 0.2,
        transpose_prob: float = 0.25,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rot_prob = rot_prob
        self.transpose_prob = transpose_prob
        self.seed = seed
        self.supports_masking = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        images = tf.convert_to_tensor(inputs)
        batch = tf.shape(images)[0]
        # One draw picks k: [0, p) -> 1, [p, 2p) -> 2, [2p, 3p) -> 3, else 0 (the report's scheme).
        draw = tf.random.uniform([batch], seed=self.seed)
        k = tf.where(draw < 3 * self.rot_prob, tf.cast(draw // self.rot_prob, tf.int32) + 1, 0)
        k = tf.minimum(k, 3)
        candidates = tf.stack([tf.image.rot90(images, i) for i in range(4)])  # [4, B, H, W, C]
        rotated = tf.gather(tf.transpose(candidates, [1, 0, 2, 3, 4]), k, batch_dims=1)
        flip = tf.random.uniform([batch], seed=None if self.seed is None else self.seed + 1)
        transposed = tf.transpose(rotated, [0, 2, 1, 3])
        mask = tf.reshape(flip < self.transpose_prob, [-1, 1, 1, 1])
        return tf.where(mask, transposed, rotated)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rot_prob": self.rot_prob,
            "transpose_prob": self.transpose_prob,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="search")
class RandomUpscaleCrop(keras.layers.Layer):
    """Per image: nearest-neighbour resize to `upscaled` squares, then a random `size` crop.
    A no-op unless training, so the output always has the input's size."""

    def __init__(self, size: int, upscaled: int, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.upscaled = upscaled
        self.seed = seed

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        images = tf.image.resize(inputs, [self.upscaled, self.upscaled], method="nearest")
        crop = [self.size, self.size, images.shape[-1] or 3]
        return tf.map_fn(
            lambda image: tf.image.random_crop(image, crop, seed=self.seed),
            images,
            fn_output_signature=tf.TensorSpec([self.size, self.size, crop[2]], images.dtype),
        )

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size, "upscaled": self.upscaled, "seed": self.seed}


@keras.saving.register_keras_serializable(package="search")
class RandomAffine(keras.layers.Layer):
    """Per image, one affine warp about the centre: a rotation within +-`rotation` turns, a
    zoom within 1 +- `zoom` (aspect kept), a shift within +-`translation` of the height and
    width, and, when `flip`, a horizontal flip half the time. A no-op unless training.

    Keras's RandomRotation, RandomZoom and RandomTranslation each resample the image; this
    resamples once, so it runs about three times faster and blurs the pixels once, not three
    times. The draws match those layers' ranges (and ImageDataGenerator's in the report).
    """

    def __init__(
        self,
        rotation: float = 0.0,
        zoom: float = 0.0,
        translation: float = 0.0,
        flip: bool = False,
        fill_mode: str = "nearest",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if fill_mode not in ("nearest", "reflect", "wrap", "constant"):
            raise ValueError(f"fill_mode {fill_mode!r}: use nearest, reflect, wrap or constant")
        self.rotation, self.zoom, self.translation = rotation, zoom, translation
        self.flip, self.fill_mode, self.seed = flip, fill_mode, seed

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        images = tf.convert_to_tensor(inputs)
        batch = tf.shape(images)[0]

        def uniform(half_width: float, offset: int) -> tf.Tensor:
            return tf.random.uniform([batch], -half_width, half_width, seed=_seed(self.seed, offset))

        height = tf.cast(tf.shape(images)[1], tf.float32)
        width = tf.cast(tf.shape(images)[2], tf.float32)
        flip = tf.where(uniform(1.0, 4) < 0.0, -1.0, 1.0) if self.flip else tf.ones([batch])
        transforms = affine_transforms(
            angle=uniform(self.rotation, 0) * 2 * math.pi,
            zoom=1.0 + uniform(self.zoom, 1),
            shift_x=uniform(self.translation, 2) * width,
            shift_y=uniform(self.translation, 3) * height,
            flip=flip,
            height=height,
            width=width,
        )
        return warp(images, transforms, self.fill_mode)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rotation": self.rotation,
            "zoom": self.zoom,
            "translation": self.translation,
            "flip": self.flip,
            "fill_mode": self.fill_mode,
            "seed": self.seed,
        }


def affine_transforms(
    *,
    angle: tf.Tensor,
    zoom: tf.Tensor,
    shift_x: tf.Tensor,
    shift_y: tf.Tensor,
    flip: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
) -> tf.Tensor:
    """[B, 8] projective transforms (TensorFlow's layout, output pixel -> input pixel) for
    per-image angles (radians), zooms (input/output scale), shifts (pixels) and flips (+-1)."""
    cos, sin = tf.cos(angle) * zoom, tf.sin(angle) * zoom
    a0, a1 = cos * flip, -sin  # input = centre + A @ (output - centre) + shift
    b0, b1 = sin * flip, cos
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a2 = cx + shift_x - (a0 * cx + a1 * cy)
    b2 = cy + shift_y - (b0 * cx + b1 * cy)
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def warp(images: tf.Tensor, transforms: tf.Tensor, fill_mode: str = "nearest") -> tf.Tensor:
    """Resample [B, H, W, C] float images through [B, 8] transforms (bilinear)."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(0.0, images.dtype),
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )


def _seed(seed: int | None, offset: int) -> int | None:
    return None if seed is None else seed + offset


# A test-time view: its name, and the function of a float [B, size, size, 3] batch giving it.
View = tuple[str, Callable[[tf.Tensor], tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class Policy:
    """One value of the `augmentation` hyperparameter."""

    name: str
    description: str
    # (image size, seed) -> the layers, for float 0..255 batches of that size
    layers: Callable[[int, int | None], list[keras.layers.Layer]]
    # image size -> the test-time views, the image itself first
    views: Callable[[int], list[View]]


def _identity(images: tf.Tensor) -> tf.Tensor:
    return images


def _mirror(images: tf.Tensor) -> tf.Tensor:
    return tf.reverse(images, axis=[2])


def _warped(*, angle: float = 0.0, zoom: float = 1.0, flip: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """One fixed warp about the centre, through the same resampling as `RandomAffine`."""

    def view(images: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(images)[0]

        def same(value: float) -> tf.Tensor:
            return tf.fill([batch], tf.constant(value, tf.float32))

        transforms = affine_transforms(
            angle=same(angle), zoom=same(zoom), shift_x=same(0.0), shift_y=same(0.0), flip=same(-1.0 if flip else 1.0),
            height=tf.cast(tf.shape(images)[1], tf.float32), width=tf.cast(tf.shape(images)[2], tf.float32),
        )
        return warp(images, transforms, "nearest")

    return view


def _centre_crop(image_size: int, upscaled: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """`RandomUpscaleCrop`'s view with the crop at the centre."""
    start = (upscaled - image_size) // 2

    def view(images: tf.Tensor) -> tf.Tensor:
        bigger = tf.image.resize(images, [upscaled, upscaled], method="nearest")
        return bigger[:, start:start + image_size, start:start + image_size, :]

    return view


def _none_views(image_size: int) -> list[View]:
    # A model trained on unaugmented images never saw a mirror: digits and text read backwards.
    return [("image", _identity)]


def _faces_views(image_size: int) -> list[View]:
    # Half the policy's ranges (rotation 10 degrees, zoom 10%): its typical draws, not its extremes.
    turn = 5 / 360 * 2 * math.pi
    return [
        ("image", _identity), ("mirror", _mirror),
        ("zoom in 5%", _warped(zoom=0.95)), ("zoom in 5%, mirrored", _warped(zoom=0.95, flip=True)),
        ("turn +5 degrees", _warped(angle=turn)), ("turn -5 degrees", _warped(angle=-turn)),
    ]


def _flowers_views(image_size: int) -> list[View]:
    return [
        ("image", _identity), ("mirror", _mirror), ("upside down", lambda x: tf.reverse(x, axis=[1])),
        ("turn 90", lambda x: tf.image.rot90(x, 1)), ("turn 270", lambda x: tf.image.rot90(x, 3)),
        ("turn 180", lambda x: tf.image.rot90(x, 2)), ("transpose", lambda x: tf.transpose(x, [0, 2, 1, 3])),
        ("centre crop", _centre_crop(image_size, _flowers_upscaled(image_size))),
        ("centre crop, mirrored", lambda x: _mirror(_centre_crop(image_size, _flowers_upscaled(image_size))(x))),
    ]


def _faces(image_size: int, seed: int | None) -> list[keras.layers.Layer]:
    # ImageDataGenerator's settings from the report (rotation 10 degrees, zoom and shifts
    # 0.1, horizontal flips) as one warp; faces are never flipped upside down.
    return [RandomAffine(10 / 360, 0.1, 0.1, flip=True, fill_mode="nearest", seed=seed)]


def _flowers_upscaled(image_size: int) -> int:
    # The report resizes to 331*30 before cropping 331, surely meant 331+30: ~9% zoom.
    return image_size + max(2, round(image_size * 30 / 331))


def _flowers(image_size: int, seed: int | None) -> list[keras.layers.Layer]:
    upscaled = _flowers_upscaled(image_size)
    return [
        RandomUpscaleCrop(image_size, upscaled, seed=_seed(seed, 0)),
        RandomRot90Transpose(0.2, 0.25, seed=_seed(seed, 1)),
        keras.layers.RandomFlip("horizontal_and_vertical", seed=_seed(seed, 2)),
    ]


POLICIES: dict[str, Policy] = {policy.name: policy for policy in (
    Policy("none", DESCRIPTIONS["none"], lambda image_size, seed: [], _none_views),
    Policy("faces", DESCRIPTIONS["faces"], _faces, _faces_views),
    Policy("flowers", DESCRIPTIONS["flowers"], _flowers, _flowers_views),
)}
assert list(POLICIES) == list(DESCRIPTIONS), "a policy is named in search.data.policies and built here"


def tta_views(policy: str, image_size: int) -> list[View]:
    """The test-time views of a policy for `image_size` squares, the image itself first."""
    if policy not in POLICIES:
        raise DataError(
            f"augmentation {policy!r} is not a policy.{did_you_mean(policy, POLICIES)} "
            f"Use one of {', '.join(POLICIES)}."
        )
    return POLICIES[policy].views(image_size)


def augmentation(policy: str, image_size: int, seed: int | None = None) -> keras.Sequential | None:
    """The policy's layers for float 0..255 batches of `image_size` squares (None when it has none).

    Call the result with ``training=True``: it is meant for the input pipeline, not the model.
    """
    if policy not in POLICIES:
        raise DataError(
            f"augmentation {policy!r} is not a policy.{did_you_mean(policy, POLICIES)} "
            f"Use one of {', '.join(POLICIES)}."
        )
    layers = POLICIES[policy].layers(image_size, seed)
    if not layers:
        return None
    return keras.Sequential([keras.Input((image_size, image_size, 3)), *layers], name=f"augment_{policy}")
