"""The feature cache of frozen backbones: same head as through the backbone, right or absent, shared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import NOTOP_BACKBONE, REPO

from search.data.dataset import open_data
from search.declare import Data
from search.engine import trial
from search.hparams import TrialConfig
from search.models import build, features, shared
from search.models.features import FeatureCache, FeatureKey

SIZE = 32
# Predictions of a head trained on float16 cached features against the same head trained
# through the backbone (same seed, same batches, same dropout masks): float16 rounding of the
# features (a relative 2**-11) is all that differs; three epochs move probabilities by ~0.02.
TOLERANCE = 0.03
# The same weights predicting from float16 features and from the raw pixels.
ROUNDING = 0.005


@pytest.fixture
def weights(notop_weights: Path) -> Path:
    return notop_weights


def frozen(weights: Path | str, **overrides) -> TrialConfig:
    values = dict(backbone=NOTOP_BACKBONE, weights=str(weights), fine_tune="frozen", image_size=SIZE, batch_size=16,
                  head_width=32, dropout=0.2, learning_rate=1e-3)
    values.update(overrides)
    return TrialConfig(**values)


def val_pixels(data) -> np.ndarray:
    return np.concatenate([x for x, _ in data.dataset("val", SIZE, 32).as_numpy_iterator()])


def test_a_head_trained_on_cached_features_predicts_as_one_trained_through_the_frozen_backbone(
        digits_split_folders, weights, tmp_path):
    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    config = frozen(weights)
    strategy = tf.distribute.get_strategy()
    through = trial.train(config, data, strategy, epochs=3, seed=5, shuffle_seed=7)
    cache = FeatureCache(tmp_path / "features")
    cached = trial.train(config, data, strategy, epochs=3, seed=5, shuffle_seed=7, feature_cache=cache)
    assert cache.builds == 2  # train and val

    pixels = val_pixels(data)
    expected, got = through.model.predict(pixels, verbose=0), cached.model.predict(pixels, verbose=0)
    assert expected.std(axis=0).mean() > 0.01  # the predictions depend on the image: a real test
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
    np.testing.assert_allclose(cached.history["val_accuracy"], through.history["val_accuracy"], atol=0.05)
    # Its val probabilities (from cached val features) are the whole model's on the raw images.
    np.testing.assert_allclose(cached.probabilities, got, atol=ROUNDING)
    assert cached.history["stage"] == [trial.PROBE] * 3


def test_the_saved_model_of_a_cached_trial_is_the_whole_model_taking_raw_pixels(digits_split_folders, weights,
                                                                                   tmp_path):
    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    config = frozen(weights)
    cached = trial.train(config, data, tf.distribute.get_strategy(), epochs=2, seed=1, shuffle_seed=1,
                         feature_cache=FeatureCache(tmp_path / "features"))
    path = build.save_for_serving(cached.model, tmp_path / "model.keras")
    loaded = keras.models.load_model(path)
    reference = build.build_model(config, data.num_classes)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in reference.layers]
    assert loaded.input_shape == (None, SIZE, SIZE, 3)
    np.testing.assert_allclose(loaded.predict(val_pixels(data), verbose=0), cached.probabilities, atol=ROUNDING)


def _count(cache: FeatureCache, config: TrialConfig, data, split: str = "train") -> np.ndarray:
    model = build.build_model(config, data.num_classes)
    key = features.key_for(config, data, split, views=1, seed=0)
    return cache.get(key, lambda: features.compute(features_of(model, config), data, key, 32))


def features_of(model, config):
    from search.models.head import features_model

    return features_model(model, config)


def test_changed_data_or_weights_file_never_reuse_a_stale_entry(digits_split_folders, weights, tmp_path):
    root = shutil.copytree(digits_split_folders, tmp_path / "digits")
    cache = FeatureCache(tmp_path / "features")
    config = frozen(shutil.copy(weights, tmp_path / "notop.weights.h5"))
    first = np.array(_count(cache, config, open_data(Data(str(root)), runs_dir=tmp_path)))
    _count(cache, config, open_data(Data(str(root)), runs_dir=tmp_path))
    assert (cache.builds, cache.hits) == (1, 1)

    # One training image replaced by another of the same class: same names, new content.
    image = sorted((root / "train" / "3").glob("*.png"))[0]
    shutil.copy(sorted((root / "train" / "3").glob("*.png"))[1], image)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    changed = np.array(_count(cache, config, open_data(Data(str(root)), runs_dir=tmp_path)))
    assert cache.builds == 2
    assert not np.array_equal(changed, first)

    # The weights file rewritten with other weights, under the same name.
    model = build.build_model(config, 10)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    backbone.set_weights([w * 0.5 for w in backbone.get_weights()])
    backbone.save_weights(config.weights)
    _count(cache, config, open_data(Data(str(root)), runs_dir=tmp_path))
    assert cache.builds == 3
    assert len(cache.entries()) == 3


def test_keys_differ_by_everything_features_depend_on(digits_split_folders, weights, tmp_path):
    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    base = frozen(weights)

    def digest(config: TrialConfig, split: str = "train", views: int = 4, seed: int = 0) -> str:
        return features.key_for(config, data, split, views=views, seed=seed).digest()

    same = {digest(base), digest(frozen(weights, head_width=512, dropout=0.5, learning_rate=0.1)),
            digest(base, seed=9), digest(base, views=2)}  # views only count with an augmentation
    assert len(same) == 1
    others = [digest(base, "val"), digest(frozen(weights, image_size=48)), digest(frozen(weights, pooling="max")),
              digest(frozen(weights, backbone="MobileNetV2")), digest(frozen(weights, augmentation="flowers")),
              digest(frozen(weights, augmentation="flowers"), views=2),
              digest(frozen("none")), digest(frozen("none"), seed=1)]
    assert len({*others, *same}) == len(others) + 1


def test_least_recently_used_entries_go_first_past_the_size_limit(tmp_path):
    cache = FeatureCache(tmp_path / "features", limit_bytes=3 * 4096)
    keys = [FeatureKey("MobileNetV2", "w", 32, "avg", "tf", "data", f"split{i}", 1, "none") for i in range(4)]
    block = np.ones((1, 16, 128), np.float16)  # 4 KiB and a header

    for index, key in enumerate(keys[:2]):
        cache.get(key, lambda: block)
        os.utime(cache.path(key), ns=(10**18 + index, 10**18 + index))
    cache.get(keys[0], lambda: block)  # used again: now the most recent
    assert cache.hits == 1
    cache.get(keys[2], lambda: block)  # over the limit: the least recently used (1) goes
    assert [p.stem for p in cache.entries()] == [keys[0].digest(), keys[2].digest()] or \
        {p.stem for p in cache.entries()} == {keys[0].digest(), keys[2].digest()}
    assert not cache.path(keys[1]).exists() and not cache.path(keys[1]).with_suffix(".json").exists()
    assert cache.size_bytes() <= cache.limit_bytes
    assert "2 entries" in cache.summary() and "1 hit(s), 3 computed" in cache.summary()


def test_a_damaged_entry_is_computed_again(tmp_path):
    cache = FeatureCache(tmp_path / "features")
    key = FeatureKey("MobileNetV2", "w", 32, "avg", "tf", "data", "train", 1, "none")
    cache.get(key, lambda: np.zeros((1, 4, 8), np.float16))
    cache.path(key).write_bytes(b"torn")
    again = cache.get(key, lambda: np.ones((1, 4, 8), np.float16))
    assert cache.builds == 2 and float(again.sum()) == 32


WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from search.data.dataset import open_data
    from search.declare import Data
    from search.hparams import TrialConfig
    from search.models import build, features
    from search.models.head import features_model

    root, weights, folder, barrier, me = sys.argv[1:6]
    data = open_data(Data(root), runs_dir=Path(folder).parent / f"runs-{me}")
    config = TrialConfig(backbone="MobileNet", weights=weights, fine_tune="frozen", image_size=32)
    model = build.build_model(config, data.num_classes)
    key = features.key_for(config, data, "train", views=1, seed=0)
    cache = features.FeatureCache(Path(folder))
    Path(barrier, me).touch()
    while len(list(Path(barrier).iterdir())) < 2:  # both ask for the key at the same moment
        time.sleep(0.01)
    computed = []

    def make():
        computed.append(1)
        time.sleep(2)  # long enough that the other worker asks while this one computes
        return features.compute(features_model(model, config), data, key, 32)

    array = cache.get(key, make)
    print(json.dumps({"computed": len(computed), "hits": cache.hits, "shape": list(array.shape)}))
""")


def test_two_workers_share_one_build_of_a_key(digits_split_folders, weights, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(digits_split_folders), str(weights),
                                 str(tmp_path / "features"), str(barrier), str(me)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in (1, 2)]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["computed"] for r in reports) == [0, 1]  # one built it, the other waited and read it
    assert sorted(r["hits"] for r in reports) == [0, 1]
    assert reports[0]["shape"] == reports[1]["shape"] == [1, 140, 1024]
    assert len(list((tmp_path / "features").glob("*.npy"))) == 1


def test_augmented_views_are_cached_once_and_drawn_per_image_each_epoch(digits_split_folders, weights, tmp_path):
    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    config = frozen(weights, augmentation="flowers")
    model = build.build_model(config, data.num_classes)
    key = features.key_for(config, data, "train", views=3, seed=0)
    views = FeatureCache(tmp_path / "features").get(
        key, lambda: features.compute(features_of(model, config), data, key, 32))
    assert views.shape == (3, 140, 1024)
    plain = features.compute(features_of(model, config), data,
                             features.key_for(frozen(weights), data, "train", views=1, seed=0), 32)
    np.testing.assert_array_equal(views[0], plain[0])  # view 0 is the plain image
    assert not np.array_equal(views[1], views[0]) and not np.array_equal(views[2], views[1])

    batches = features.feature_batches(views, data.labels("train"), 140, shuffle=True, seed=0)
    epochs = [next(iter(batches))[0].numpy() for _ in range(2)]
    flat = np.asarray(views, np.float32).reshape(3 * 140, -1)

    def drawn(epoch: np.ndarray) -> set[int]:
        return {int(np.flatnonzero((flat == row).all(axis=1))[0]) // 140 for row in epoch}

    assert drawn(epochs[0]) == {0, 1, 2}  # each image's view drawn, not one view for all
    assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.slow  # four backbone trainings; CI keeps the cached-vs-backbone equivalence above
def test_cached_trials_of_one_process_share_one_frozen_backbone_and_match_fresh_builds(
        digits_split_folders, weights, tmp_path):
    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    cache = FeatureCache(tmp_path / "features")
    strategy = tf.distribute.get_strategy()
    shared.forget()
    first = trial.train(frozen(weights, head_width=16), data, strategy, epochs=1, seed=1, shuffle_seed=1,
                        feature_cache=cache)
    first_path = build.save_for_serving(first.model, tmp_path / "first.keras")
    backbone = trial._backbone_of(first.model)
    built = [w.copy() for w in backbone.get_weights()]
    second = trial.train(frozen(weights, head_width=48, dropout=0.3), data, strategy, epochs=1, seed=2,
                         shuffle_seed=2, feature_cache=cache)
    assert trial._backbone_of(second.model) is backbone  # built once, shared
    for got, expected in zip(backbone.get_weights(), built, strict=True):  # and no trial changed it
        np.testing.assert_array_equal(got, expected)

    # The second trial as a fresh process runs it (its own build): the same head, the same results.
    shared.forget()
    fresh = trial.train(frozen(weights, head_width=48, dropout=0.3), data, strategy, epochs=1, seed=2,
                        shuffle_seed=2, feature_cache=cache)
    assert trial._backbone_of(fresh.model) is not backbone
    np.testing.assert_allclose(second.probabilities, fresh.probabilities, atol=1e-6)
    assert second.history["val_loss"] == pytest.approx(fresh.history["val_loss"], abs=1e-6)

    # Each saved model is whole and predicts raw pixels as its trial did.
    pixels = val_pixels(data)
    second_path = build.save_for_serving(second.model, tmp_path / "second.keras")
    for path, trained in ((first_path, first), (second_path, second)):
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(loaded.predict(pixels, verbose=0), trained.probabilities, atol=ROUNDING)
