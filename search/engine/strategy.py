"""Which devices to train on: TPU, several GPUs, or the default strategy; and mixed precision.

Mirrors the report's opening cell (`TPUClusterResolver` -> `TPUStrategy`, else the default
strategy), made cheap and silent on machines without a TPU.
"""

from __future__ import annotations

import glob
import logging
import os

import tensorflow as tf

from search.errors import SearchError, did_you_mean

KINDS = ("auto", "tpu", "gpus", "default")

logger = logging.getLogger(__name__)

# Environment variables through which Cloud/Kaggle/Colab TPU setups name their TPU.
_TPU_ENV = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG", "COLAB_TPU_ADDR")


def _local_tpu_present() -> bool:
    # TPU VMs expose their chips as /dev/accel* (v2, v3) or /dev/vfio/<n> (v4 and later).
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _connect_tpu() -> tf.distribute.Strategy | None:
    """TPUStrategy if a TPU is configured or attached, None if there is none to try.

    Raises whatever connecting raises once a TPU was announced but cannot be reached.
    """
    if not any(name in os.environ for name in _TPU_ENV) and not _local_tpu_present():
        return None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    except ValueError:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def detect(kind: str = "auto") -> tf.distribute.Strategy:
    """The distribution strategy for `kind`.

    "auto": a TPU if one is configured or attached, else MirroredStrategy over all GPUs
    when there are several, else the default strategy. "tpu", "gpus" and "default" force
    one and raise SearchError when it is not available.
    """
    if kind not in KINDS:
        raise SearchError(
            f"unknown strategy {kind!r}.{did_you_mean(str(kind), KINDS)} Use one of {', '.join(KINDS)}."
        )
    if kind in ("auto", "tpu"):
        try:
            strategy = _connect_tpu()
        except Exception as error:  # noqa: BLE001 - TF raises many kinds; all mean "no TPU"
            if kind == "tpu":
                raise SearchError(f"could not connect to the TPU: {error}") from error
            logger.warning("a TPU seems configured but connecting failed (%s); not using it", error)
            strategy = None
        if strategy is not None:
            return strategy
        if kind == "tpu":
            raise SearchError(
                "no TPU found: set TPU_NAME (Cloud TPU) or run on a TPU VM, "
                "or use strategy 'auto' to train on what this machine has."
            )
    gpus = _gpus()
    if kind == "gpus":
        if not gpus:
            raise SearchError(
                "no GPU found (tf.config.list_physical_devices('GPU') is empty): install a GPU "
                "build of TensorFlow (pip install 'tensorflow[and-cuda]') or use strategy 'auto'."
            )
        return tf.distribute.MirroredStrategy()
    if kind == "auto" and len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def replicas(strategy: tf.distribute.Strategy) -> int:
    """How many copies of the model train in sync (the global batch is this times the batch)."""
    return int(strategy.num_replicas_in_sync)


def _is_tpu(strategy: tf.distribute.Strategy) -> bool:
    return "TPU" in type(strategy).__name__


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line for logs, e.g. "TPUStrategy (8 replicas)" or "default strategy on CPU (1 replica)"."""
    n = replicas(strategy)
    count = f"{n} replica{'s' if n != 1 else ''}"
    name = type(strategy).__name__
    if _is_tpu(strategy):
        return f"{name} ({count})"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return f"MirroredStrategy on {n} GPU{'s' if n != 1 else ''} ({count})"
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        device = "GPU" if _gpus() else "CPU"
        return f"default strategy on {device} ({count})"
    return f"{name} ({count})"


def set_mixed_precision(enabled: bool, strategy: tf.distribute.Strategy) -> str:
    """Set Keras' global dtype policy for models built after this call; return its name.

    "mixed_bfloat16" on TPU, "mixed_float16" on GPU; on CPU mixed precision is slower, not
    faster, so it stays "float32" (and says so).
    """
    import keras

    if not enabled:
        policy = "float32"
    elif _is_tpu(strategy):
        policy = "mixed_bfloat16"
    elif _gpus():
        policy = "mixed_float16"
    else:
        policy = "float32"
        logger.warning("mixed precision asked for, but there is no GPU or TPU: training in float32 on CPU")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def jit_compile(enabled: bool, strategy: tf.distribute.Strategy) -> bool:
    """Whether train steps compile with XLA: when asked for and there is a GPU or TPU (on CPU
    XLA's compile time is rarely paid back)."""
    return bool(enabled) and (_is_tpu(strategy) or bool(_gpus()))
