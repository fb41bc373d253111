"""Backbones, the classifier head on top of them, and compiling the result.

A model takes raw 0-255 RGB pixels and does its backbone's own preprocessing inside, with
built-in Keras layers only: a saved `.keras` file loads with `keras.models.load_model` and no
custom objects, and models with different preprocessing can be averaged in one ensemble.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from search.errors import ModelError, did_you_mean
from search.runs import atomic
from search.hparams import FINE_TUNE_MODES, TrialConfig
from search.models.head import head_layers, pooling_layer
from search.models.head import head_widths as head_widths  # re-exported: callers import it from here
from search.models.backbones import BACKBONES, PREPROCESSING, Backbone, with_weights
from search.models import shared
from search.models.features import weights_digest
from search.models.optimizers import OPTIMIZERS
from search.models.schedules import learning_rate_schedule

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Caffe-mode means, in the BGR order the ResNet v1 weights expect.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _builtin_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A copy of one layer of the `efficientnet` package built from Keras' own classes."""
    config = layer.get_config()
    if getattr(getattr(layer, "activation", None), "__name__", None) == "swish":
        config["activation"] = "swish"
    # FixedDropout only works around a tf.keras 2.0 bug; Keras 3's Dropout takes the same config.
    cls = keras.layers.Dropout if type(layer).__name__ == "FixedDropout" else type(layer)
    return cls.from_config(config)


def construct_headless(backbone: Backbone, input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    """The registry entry's model without its top, for `weights` ("imagenet", None,
    "noisy-student" or the path of a weights file)."""
    module, _, name = backbone.constructor.rpartition(".")
    if backbone.library == "keras":
        factory = getattr(keras.applications, name)
        return factory(include_top=False, weights=weights, input_shape=input_shape, pooling=None, **backbone.options)
    import efficientnet.tfkeras as efn

    original = getattr(efn, name)(include_top=False, weights=weights, input_shape=input_shape, pooling=None,
                                  **backbone.options)
    # Its custom FixedDropout and swish would make saved models need custom_objects.
    model = keras.models.clone_model(original, clone_function=_builtin_layer)
    model.set_weights(original.get_weights())
    return model


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`, or ModelError suggesting the closest one."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelError(
            f"unknown backbone {name!r}.{did_you_mean(str(name), BACKBONES)} Known: {', '.join(BACKBONES)}"
        ) from None


def _resolve_weights(backbone: Backbone, weights: str) -> str | None:
    keyword = weights.strip().lower()
    if keyword == "none":
        return None
    if keyword in ("imagenet", "noisy-student"):
        if keyword not in backbone.weights:
            with_it = with_weights(keyword)
            raise ModelError(
                f"{backbone.name} has no {keyword!r} weights; they exist for {', '.join(with_it)}. "
                f"Use weights 'imagenet' or 'none' for {backbone.name}."
            )
        return keyword
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise ModelError(
            f"weights file '{weights}' does not exist: give the path of a {backbone.name} weights "
            f"file without its top (e.g. a *_notop.h5 or a .weights.h5 saved from the headless "
            f"backbone), or use weights 'imagenet' or 'none'."
        )
    return path


def _construct_backbone(backbone: Backbone, size: int, weights: str | None, given: str) -> keras.Model:
    from_file = weights not in (None, "imagenet", "noisy-student")
    try:
        # A file that does not fit makes Keras warn once per layer before it raises.
        with warnings.catch_warnings(record=from_file) as caught:
            model = construct_headless(backbone, (size, size, 3), weights)
        for warning in caught or ():
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return model
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if from_file:
            raise ModelError(
                f"weights file '{given}' does not fit backbone {backbone.name}: {detail} "
                f"Use weights saved from {backbone.name} without its top (include_top=False; "
                f"Keras 2 files are named *_notop.h5), or weights 'imagenet' or 'none'."
            ) from error
        if weights is not None and ("fetch failure" in str(error) or isinstance(error, OSError)):
            raise ModelError(
                f"could not download the {weights!r} weights of {backbone.name}: {detail} "
                f"Without internet, download the notop weights file elsewhere and give its path "
                f"as weights, or use weights 'none'."
            ) from error
        raise


def _set_trainable(backbone: keras.Model, mode: str, top_layers: int) -> None:
    if mode == "frozen":
        backbone.trainable = False
    elif mode in ("all", "probe_then_all"):
        backbone.trainable = True
    elif mode == "top":
        backbone.trainable = True
        first = max(0, len(backbone.layers) - int(top_layers))
        for index, layer in enumerate(backbone.layers):
            # BatchNormalization stays frozen: updating its statistics on a small new dataset
            # wrecks what the pretrained layers learned (Keras' fine-tuning guide).
            layer.trainable = index >= first and not isinstance(layer, keras.layers.BatchNormalization)
    else:
        raise ModelError(f"fine_tune must be one of {', '.join(FINE_TUNE_MODES)}, got {mode!r}")


def _preprocess(x: Any, mode: str) -> Any:
    # float32 even under a mixed policy: 0-255 minus a mean loses digits in float16.
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, dtype="float32", name="preprocess_tf")(x)
    if mode == "torch":
        x = keras.layers.Rescaling(1 / 255.0, dtype="float32", name="preprocess_scale")(x)
        return keras.layers.Normalization(
            mean=list(IMAGENET_MEAN_RGB),
            variance=[s**2 for s in IMAGENET_STD_RGB],
            dtype="float32",
            name="preprocess_torch",
        )(x)
    if mode == "caffe":
        # RGB -> BGR and mean subtraction as one frozen 1x1 convolution.
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
            kernel[0, 0, rgb, bgr] = 1.0
        return keras.layers.Conv2D(
            3,
            1,
            kernel_initializer=keras.initializers.Constant(kernel),
            bias_initializer=keras.initializers.Constant(-np.array(CAFFE_MEAN_BGR, dtype="float32")),
            trainable=False,
            dtype="float32",
            name="preprocess_caffe",
        )(x)
    if mode == "none":
        return x
    raise ModelError(f"unknown preprocessing {mode!r}; use one of {', '.join(PREPROCESSING)}")


def model_name(config: TrialConfig) -> str:
    """A readable default name, e.g. "DenseNet201_224", usable as a Keras layer name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{config.backbone}_{config.image_size}")


def build_model(config: TrialConfig, num_classes: int, *, name: str | None = None,
                share_frozen: bool = False) -> keras.Model:
    """Backbone + head for `config`, taking raw (image_size, image_size, 3) pixels in 0..255.

    Raises ModelError for an unknown backbone, an image size below the backbone's minimum,
    and weights that are missing, unavailable or do not fit. Give each member of a future
    ensemble its own `name` (default: `model_name(config)`). `share_frozen`: a frozen
    backbone with given weights is built once per process and shared (`search.models.shared`);
    the model must then be saved before the next one is built, and never unfrozen.
    """
    backbone_spec = get_backbone(config.backbone)
    size = int(config.image_size)
    if size < backbone_spec.min_size:
        raise ModelError(
            f"image_size {size} is too small for backbone {backbone_spec.name}: it needs at least "
            f"{backbone_spec.min_size} pixels. Use image_size >= {backbone_spec.min_size}."
        )
    if int(num_classes) < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    weights = _resolve_weights(backbone_spec, config.weights)
    if weights == "imagenet" and backbone_spec.imagenet_size and size != backbone_spec.imagenet_size:
        raise ModelError(
            f"{backbone_spec.name}'s ImageNet weights exist for {backbone_spec.imagenet_size} px images only, "
            f"not {size}: use image_size {backbone_spec.imagenet_size}, or weights 'none'."
        )
    if share_frozen and config.fine_tune == "frozen" and weights is not None:
        key = (backbone_spec.name, weights_digest(config.weights, seed=0), size)
        backbone = shared.frozen_backbone(key, lambda: _construct_backbone(backbone_spec, size, weights, config.weights))
    else:
        backbone = _construct_backbone(backbone_spec, size, weights, config.weights)
    if weights is None:
        _quicken_batchnorm(backbone)
    _set_trainable(backbone, config.fine_tune, config.fine_tune_layers)

    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = _preprocess(inputs, backbone_spec.preprocessing)
    # A frozen or partly frozen backbone runs in inference mode, so its BatchNormalization
    # layers keep their statistics even when part of it is trainable.
    x = backbone(x) if config.fine_tune in ("all", "probe_then_all") else backbone(x, training=False)
    x = pooling_layer(config)(x)
    for layer in head_layers(config, num_classes):
        x = layer(x)
    outputs = x
    return keras.Model(inputs, outputs, name=name or model_name(config))


FROM_SCRATCH_BN_MOMENTUM = 0.9


def _quicken_batchnorm(backbone: keras.Model) -> None:
    """Let BatchNormalization statistics follow a network trained from scratch.

    The applications' momenta (0.99; 0.999 for MobileNetV2) suit weeks of ImageNet
    training from pretrained statistics. From scratch, over a few hundred steps, the moving
    averages lag the fast-changing activations so far that inference-mode predictions stay
    at chance while training accuracy is high (seen on the digits demo: 0.10 vs 0.94).
    """
    for layer in all_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = FROM_SCRATCH_BN_MOMENTUM


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of `model`, those of nested models included (depth first)."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += all_layers(layer)
    return found


@keras.saving.register_keras_serializable(package="transfer_search")
class SparseCategoricalCrossentropyWithSmoothing(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing (Keras' sparse loss has none)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_categorical_crossentropy", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(labels, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


# XLA compilation of train steps: set once per search where it applies (search.engine.strategy).
_jit = {"compile": False}


def set_jit_compile(enabled: bool) -> None:
    _jit["compile"] = bool(enabled)


def compile_model(model: keras.Model, config: TrialConfig, *, replicas: int = 1) -> None:
    """Compile with config's optimizer at its schedule's epoch-0 rate, sparse cross-entropy, accuracy.

    Labels are integers. With label_smoothing > 0 the loss is this module's registered
    SparseCategoricalCrossentropyWithSmoothing: such a model loads with `compile=False`
    anywhere, and compiled wherever `search.models.build` is imported. Call inside
    `strategy.scope()` when training with a strategy.
    """
    rate = learning_rate_schedule(config, epochs=1, replicas=replicas)(0)
    spec = OPTIMIZERS.get(config.optimizer)
    if spec is None:
        raise ModelError(
            f"unknown optimizer {config.optimizer!r}.{did_you_mean(str(config.optimizer), OPTIMIZERS)} "
            f"Use one of {', '.join(OPTIMIZERS)}."
        )
    optimizer = getattr(keras.optimizers, spec.keras_class)(learning_rate=rate, **spec.options)
    if config.label_smoothing > 0:
        loss: keras.losses.Loss = SparseCategoricalCrossentropyWithSmoothing(config.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=_jit["compile"])


def save_for_serving(model: keras.Model, path: str | os.PathLike[str]) -> Path:
    """Save `model` atomically without its optimizer: `.keras` files otherwise carry the
    optimizer's state (twice the weights for Adam), which serving and ensembles never use."""
    compiled = getattr(model, "optimizer", None) is not None
    serving = keras.Model(model.inputs, model.outputs, name=model.name) if compiled else model
    return atomic.write_with(path, serving.save)


def count_params(model: keras.Model) -> int:
    """All parameters, trainable or not (the report's "params" column)."""
    return int(model.count_params())


def model_size_mb(path: str | os.PathLike[str]) -> float:
    """Size on disk in MiB (2**20 bytes) of a saved file, or of everything under a folder."""
    path = Path(path)
    if path.is_dir():
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        total = path.stat().st_size
    return total / 2**20


def build_user_model(build: Callable[..., Any], hp: Any, image_size: int, num_classes: int) -> keras.Model:
    """A space's own `build_model(hp, inputs, num_classes)`, given raw (size, size, 3) pixels in
    0..255; it returns a model or its output tensor, which must be (batch, num_classes)
    probabilities. ModelError says what is wrong with what it returned."""
    inputs = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="image")
    built = build(hp, inputs, num_classes)
    if built is None:
        raise ModelError("build_model(hp, inputs, num_classes) returned None. Did you forget to return the model "
                         "(or its output tensor)?")
    model = built if isinstance(built, keras.Model) else keras.Model(inputs, built, name="user_model")
    shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else None
    if shape is None or len(shape) != 2 or shape[-1] != num_classes:
        raise ModelError(f"build_model must return one output of shape (batch, {num_classes}) (one probability "
                         f"per class), got {model.output_shape}.")
    return model
