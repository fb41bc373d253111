from __future__ import annotations

import logging
import time
import warnings

import keras
import pytest
import tensorflow as tf

from search.engine import strategy as strategy_module
from search.errors import SearchError
from search.engine.strategy import describe, detect, replicas, set_mixed_precision


@pytest.fixture
def restore_policy():
    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(strategy_module, "_gpus", lambda: [])
    for name in strategy_module._TPU_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(strategy_module, "_local_tpu_present", lambda: False)


def test_auto_on_cpu_is_default_strategy_fast_and_silent(cpu_only, caplog):
    caplog.set_level(logging.DEBUG, logger="search.strategy")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy = detect("auto")
    assert time.perf_counter() - start < 2.0
    assert strategy is tf.distribute.get_strategy()
    assert replicas(strategy) == 1
    assert not caplog.records


def test_describe_default_mentions_cpu(cpu_only):
    text = describe(detect())
    assert text == "default strategy on CPU (1 replica)"


def test_forcing_default_works(cpu_only):
    assert detect("default") is tf.distribute.get_strategy()


def test_forcing_missing_tpu_or_gpu_is_a_clear_error(cpu_only):
    with pytest.raises(SearchError, match="no TPU found"):
        detect("tpu")
    with pytest.raises(SearchError, match="no GPU found"):
        detect("gpus")


def test_unknown_kind_suggests(cpu_only):
    with pytest.raises(SearchError, match="Did you mean 'gpus'"):
        detect("gpu")


def test_announced_tpu_that_fails_falls_back_in_auto(cpu_only, monkeypatch, caplog):
    def broken():
        raise RuntimeError("TPU unreachable")

    monkeypatch.setattr(strategy_module, "_connect_tpu", broken)
    assert detect("auto") is tf.distribute.get_strategy()
    assert "connecting failed" in caplog.text
    with pytest.raises(SearchError, match="could not connect to the TPU: TPU unreachable"):
        detect("tpu")


def test_describe_names_other_strategies():
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert describe(one_device) == "OneDeviceStrategy (1 replica)"


def test_mixed_precision_on_cpu_stays_float32(cpu_only, restore_policy, caplog):
    assert set_mixed_precision(True, detect()) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    assert "float32 on CPU" in caplog.text
    assert set_mixed_precision(False, detect()) == "float32"


def test_mixed_precision_picks_policy_by_device(restore_policy, monkeypatch):
    class TPUStrategy:  # stands in for tf.distribute.TPUStrategy by name, as describe() does
        num_replicas_in_sync = 8

    assert set_mixed_precision(True, TPUStrategy()) == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert describe(TPUStrategy()) == "TPUStrategy (8 replicas)"
    monkeypatch.setattr(strategy_module, "_gpus", lambda: ["GPU:0"])
    assert set_mixed_precision(True, tf.distribute.get_strategy()) == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_float16"


def test_auto_on_this_machine_without_patches():
    if tf.config.list_physical_devices("GPU") or strategy_module._local_tpu_present():
        pytest.skip("this machine has an accelerator")
    start = time.perf_counter()
    strategy = detect()
    assert time.perf_counter() - start < 2.0
    assert replicas(strategy) == 1
    assert "CPU" in describe(strategy)
