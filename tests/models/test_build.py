from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from search.errors import ModelError
from search.hparams import TrialConfig
from search.models.build import (
    SparseCategoricalCrossentropyWithSmoothing,
    build_model,
    compile_model,
    count_params,
    head_widths,
    model_size_mb,
)

SIZE = 32
CLASSES = 5
# One backbone per preprocessing mode plus the `efficientnet` package; small and fast at 32 px.
REPRESENTATIVE = {
    "MobileNetV2": "tf",
    "DenseNet121": "torch",
    "ResNet50": "caffe",
    "EfficientNetB0": "none",
    "efficientnet.EfficientNetB0": "torch",
}


def config(**overrides) -> TrialConfig:
    values = {"backbone": "MobileNet", "weights": "none", "image_size": SIZE}
    values.update(overrides)
    return TrialConfig(**values)


def pixels(n: int = 3, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def backbone_of(model: keras.Model) -> keras.Model:
    (nested,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested


@pytest.fixture(scope="module")
def built() -> dict[str, keras.Model]:
    return {name: build_model(config(backbone=name), CLASSES) for name in REPRESENTATIVE}


# --- registry ---------------------------------------------------------------


def test_hparams_validation_uses_the_registry():
    from search.errors import SpaceError
    from search.hparams import check_value

    check_value("backbone", "efficientnet.EfficientNetB7")
    with pytest.raises(SpaceError, match="Did you mean 'DenseNet201'"):
        check_value("backbone", "densenet201")


# --- building ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(REPRESENTATIVE))
def test_representative_backbones_build_and_output_float32_softmax(built, name):
    model = built[name]
    assert model.name == name.replace(".", "_") + f"_{SIZE}"
    assert model.input_shape == (None, SIZE, SIZE, 3)
    assert model.output_shape == (None, CLASSES)
    out = model(pixels(), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    out = np.asarray(out)
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def _preprocessed(model: keras.Model, x: np.ndarray) -> np.ndarray:
    backbone = backbone_of(model)
    index = model.layers.index(backbone)
    feeder = model.layers[index - 1]
    return np.asarray(keras.Model(model.input, feeder.output)(x))


@pytest.mark.parametrize(
    "name, reference",
    [
        ("MobileNetV2", "keras.applications.mobilenet_v2"),
        ("DenseNet121", "keras.applications.densenet"),
        ("ResNet50", "keras.applications.resnet50"),
        ("efficientnet.EfficientNetB0", "efficientnet.tfkeras"),
    ],
)
def test_preprocessing_matches_reference_preprocess_input(built, name, reference):
    import importlib

    x = pixels(2)
    x[0, 0, 0] = [0, 0, 0]
    x[0, 0, 1] = [255, 255, 255]
    x[0, 0, 2] = [255, 0, 10]  # asymmetric, so a missing RGB->BGR swap shows
    expected = importlib.import_module(reference).preprocess_input(x.copy())
    np.testing.assert_allclose(_preprocessed(built[name], x), np.asarray(expected), rtol=1e-5, atol=1e-4)


def test_backbones_with_their_own_normalisation_take_raw_pixels(built):
    model = built["EfficientNetB0"]
    assert model.layers[1] is backbone_of(model)
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in backbone_of(model).layers)


def test_caffe_preprocessing_is_frozen(built):
    layer = built["ResNet50"].get_layer("preprocess_caffe")
    assert not layer.trainable and not layer.trainable_weights


def test_qubvel_backbone_uses_builtin_layers_only(built):
    backbone = backbone_of(built["efficientnet.EfficientNetB0"])
    modules = {type(layer).__module__.split(".")[0] for layer in backbone.layers}
    assert modules == {"keras"}


def test_head_structure_widths_halve_with_dropout_and_batchnorm():
    cfg = config(head_layers=3, head_width=64, dropout=0.3, head_batchnorm=True, pooling="max")
    model = build_model(cfg, CLASSES)
    names = [layer.name for layer in model.layers]
    start = names.index("max_pool")
    assert names[start:] == [
        "max_pool", "head_bn",
        "head_dropout_1", "head_dense_1", "head_dense_1_bn",
        "head_dropout_2", "head_dense_2", "head_dense_2_bn",
        "head_dropout_3", "head_dense_3", "head_dense_3_bn",
        "head_dropout", "predictions",
    ]  # fmt: skip
    assert isinstance(model.get_layer("max_pool"), keras.layers.GlobalMaxPooling2D)
    assert [model.get_layer(f"head_dense_{i}").units for i in (1, 2, 3)] == [64, 32, 16] == head_widths(cfg)
    assert all(model.get_layer(f"head_dense_{i}").activation.__name__ == "relu" for i in (1, 2, 3))
    assert {model.get_layer(n).rate for n in names if "dropout" in n} == {0.3}
    assert model.get_layer("predictions").units == CLASSES


def test_minimal_head_is_pool_then_softmax():
    model = build_model(config(head_layers=0, dropout=0.0), CLASSES)
    names = [layer.name for layer in model.layers]
    assert names[names.index("avg_pool") :] == ["avg_pool", "predictions"]
    assert isinstance(model.get_layer("avg_pool"), keras.layers.GlobalAveragePooling2D)


def test_fine_tune_modes_set_trainable():
    frozen = build_model(config(fine_tune="frozen"), CLASSES)
    assert not backbone_of(frozen).trainable
    assert not backbone_of(frozen).trainable_weights
    assert frozen.trainable_weights  # the head still trains

    everything = build_model(config(fine_tune="all"), CLASSES)
    assert all(layer.trainable for layer in backbone_of(everything).layers)

    top = build_model(config(fine_tune="top", fine_tune_layers=10), CLASSES)
    layers = backbone_of(top).layers
    for layer in layers[:-10]:
        assert not layer.trainable, layer.name
    for layer in layers[-10:]:
        assert layer.trainable == (not isinstance(layer, keras.layers.BatchNormalization)), layer.name
    trainable = {id(v) for v in backbone_of(top).trainable_weights}
    assert trainable and trainable == {id(v) for layer in layers[-10:] if layer.trainable for v in layer.weights}


def test_unknown_backbone_and_too_small_image():
    with pytest.raises(ModelError, match="Did you mean 'MobileNetV2'"):
        build_model(config(backbone="mobilenetv2"), CLASSES)
    with pytest.raises(ModelError, match=r"image_size 64 is too small for backbone Xception.*at least 71"):
        build_model(config(backbone="Xception", image_size=64), CLASSES)


def test_mixed_precision_keeps_preprocessing_and_output_float32():
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(config(backbone="MobileNetV2"), CLASSES)
    finally:
        keras.mixed_precision.set_global_policy(before)
    assert model.get_layer("preprocess_tf").compute_dtype == "float32"
    assert model.get_layer("head_dense_1").compute_dtype == "float16"
    assert keras.backend.standardize_dtype(model(pixels(1)).dtype) == "float32"


# --- saving and loading -------------------------------------------------------


def test_an_ensemble_of_models_saves_and_loads_without_custom_objects(built, tmp_path):
    # One member per way of preprocessing: tf mode, caffe mode, the efficientnet package.
    names = ["MobileNetV2", "ResNet50", "efficientnet.EfficientNetB0"]
    x = pixels(2, seed=1)
    inputs = keras.Input((SIZE, SIZE, 3))
    averaged = keras.layers.Average()([built[name](inputs) for name in names])
    ensemble = keras.Model(inputs, averaged, name="ensemble")
    ensemble.save(tmp_path / "ensemble.keras")
    expected = {built[name].name: np.asarray(built[name](x, training=False)) for name in names}
    expected["ensemble"] = np.asarray(ensemble(x, training=False))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "expected.npz", **expected)

    # A fresh interpreter that never imports `search` or `efficientnet`: no custom objects exist.
    script = textwrap.dedent(
        f"""
        import json, sys, numpy as np, keras
        x = np.load("x.npy"); expected = np.load("expected.npz")
        ensemble = keras.models.load_model("ensemble.keras")
        diffs = {{"ensemble": float(np.abs(np.asarray(ensemble(x)) - expected["ensemble"]).max())}}
        for name in {sorted(expected)!r}:
            if name != "ensemble":
                out = ensemble.get_layer(name)(x, training=False)
                diffs[name] = float(np.abs(np.asarray(out) - expected[name]).max())
        assert "search" not in sys.modules and "efficientnet" not in sys.modules
        print(json.dumps(diffs))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    diffs = json.loads(done.stdout.strip().splitlines()[-1])
    assert diffs == {name: pytest.approx(0.0, abs=1e-6) for name in expected}


def test_count_params_and_model_size(built, tmp_path):
    model = built["MobileNetV2"]
    assert count_params(model) == model.count_params() > 2_000_000
    path = tmp_path / "m.keras"
    model.save(path)
    assert model_size_mb(path) == pytest.approx(path.stat().st_size / 2**20)
    assert model_size_mb(tmp_path) >= model_size_mb(path) > 8


# --- weights --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenetv2_weights(tmp_path_factory):
    """A headless MobileNetV2's weights in Keras 3 and in legacy (Keras 2 style) .h5 form."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    folder = tmp_path_factory.mktemp("weights")
    source = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    modern = folder / "mobilenetv2.weights.h5"
    source.save_weights(modern)
    legacy = folder / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(legacy, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, source)
    return source.get_weights(), {"modern": str(modern), "legacy": str(legacy)}


@pytest.mark.parametrize("form", ["modern", "legacy"])
def test_weights_file_is_loaded(mobilenetv2_weights, form):
    expected, paths = mobilenetv2_weights
    model = build_model(config(backbone="MobileNetV2", weights=paths[form]), CLASSES)
    loaded = backbone_of(model).get_weights()
    assert len(loaded) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(loaded, expected))


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(ModelError, match=f"weights file '{missing}' does not exist: .*MobileNet"):
        build_model(config(weights=str(missing)), CLASSES)


@pytest.mark.parametrize("form, backbone", [("modern", "DenseNet121"), ("legacy", "MobileNet")])
def test_weights_file_of_another_backbone(mobilenetv2_weights, form, backbone):
    path = mobilenetv2_weights[1][form]
    with pytest.raises(ModelError) as caught:
        build_model(config(backbone=backbone, weights=path), CLASSES)
    message = str(caught.value)
    assert f"weights file '{path}' does not fit backbone {backbone}" in message
    assert "include_top=False" in message


def test_noisy_student_only_for_the_efficientnet_package():
    with pytest.raises(ModelError, match="MobileNet has no 'noisy-student' weights.*efficientnet.EfficientNetB7"):
        build_model(config(weights="noisy-student"), CLASSES)


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined")
def test_failed_imagenet_download_is_a_model_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example/x.h5: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ModelError, match="could not download the 'imagenet' weights of MobileNet.*path"):
        build_model(config(weights="imagenet"), CLASSES)


# --- compiling and training ------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer, schedule, expected_lr, kind",
    [
        ("adam", "constant", 3e-4, keras.optimizers.Adam),
        ("rmsprop", "step", 3e-4, keras.optimizers.RMSprop),
        ("sgd", "warmup_exp", 1e-5, keras.optimizers.SGD),
    ],
)
def test_compile_model_optimizer_and_first_rate(optimizer, schedule, expected_lr, kind):
    cfg = config(optimizer=optimizer, schedule=schedule, learning_rate=3e-4, head_layers=0)
    model = build_model(cfg, CLASSES)
    compile_model(model, cfg, replicas=8)
    assert isinstance(model.optimizer, kind)
    assert float(model.optimizer.learning_rate) == pytest.approx(expected_lr)
    if optimizer == "sgd":
        assert model.optimizer.momentum == pytest.approx(0.9)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)


def test_fit_with_the_schedule_callback_logs_accuracy_and_rates(tmp_path):
    from search.models.schedules import learning_rate_schedule

    cfg = config(fine_tune="frozen", label_smoothing=0.1, head_width=16, schedule="warmup_exp", learning_rate=5e-5)
    model = build_model(cfg, CLASSES)
    compile_model(model, cfg)
    scheduler = keras.callbacks.LearningRateScheduler(learning_rate_schedule(cfg, epochs=2))
    history = model.fit(pixels(4), np.array([0, 1, 2, 4]), epochs=2, batch_size=4, verbose=0, callbacks=[scheduler])
    assert set(history.history) == {"loss", "accuracy", "learning_rate"}
    assert history.history["learning_rate"] == pytest.approx([1e-5, 1.8e-5])
    assert np.all(np.isfinite(history.history["loss"]))
    model.save(tmp_path / "smoothed.keras")
    reloaded = keras.models.load_model(tmp_path / "smoothed.keras")  # compiled: search.models is imported
    assert isinstance(reloaded.loss, SparseCategoricalCrossentropyWithSmoothing)


def test_label_smoothing_loss_matches_categorical_crossentropy():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    labels = np.array([0, 2])
    one_hot = np.eye(3, dtype="float32")[labels]
    smoothed = SparseCategoricalCrossentropyWithSmoothing(0.1)(labels, probs)
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(one_hot, probs)
    assert float(smoothed) == pytest.approx(float(reference), rel=1e-6)
    plain = SparseCategoricalCrossentropyWithSmoothing(0.0)(labels, probs)
    assert float(plain) == pytest.approx(float(keras.losses.SparseCategoricalCrossentropy()(labels, probs)), rel=1e-6)


def test_noisy_student_weights_are_requested_from_the_efficientnet_package(monkeypatch):
    import tensorflow as tf

    requested = []

    def offline(fname, *args, **kwargs):
        requested.append(fname)
        raise Exception(f"URL fetch failure on https://example/{fname}: None -- offline")

    monkeypatch.setattr(tf.keras.utils, "get_file", offline)
    with pytest.raises(ModelError, match="could not download the 'noisy-student' weights of efficientnet.EfficientNetB0"):
        build_model(config(backbone="efficientnet.EfficientNetB0", weights="noisy-student"), CLASSES)
    assert requested == ["efficientnet-b0_noisy-student_notop.h5"]


def test_from_scratch_backbones_get_fast_batchnorm_statistics():
    # Without this, MobileNetV2 (momentum 0.999) trained from scratch for a few hundred steps
    # predicts at chance in inference mode while its training accuracy is high.
    model = build_model(TrialConfig(backbone="MobileNetV2", weights="none", image_size=32), 10)
    momenta = {layer.momentum for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
