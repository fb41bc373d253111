"""Every use of a third-party private API, and every patch of third-party behaviour.

Each entry names what it relies on and why; `tests/test_compat.py` checks each one against
the installed library, and fails when the upstream behaviour changes (a bug fixed, an
attribute moved), so that an upgrade is noticed instead of silently mis-patched.
pyproject.toml pins the upper bounds of the libraries these depend on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Keras Tuner 1.4.x ------------------------------------------------------------------------
# `HyperParameters.ensure_active_values` (added by keras-team/keras-tuner#791) drops a value
# when any one of several hyperparameters of that name is inactive, so
# `hp.Fixed("learning_rate", 5e-4, parent_values=["Xception"])` beside
# `hp.Fixed("learning_rate", 5e-5, parent_values=["DenseNet201"])` lost both, and the grid
# kept the previous trial's value for the one active now. No upstream issue tracks it.
# `HyperParameters.copy` builds the base class, so a subclass cannot carry the fix: it is
# installed on the class by `patch_keras_tuner`, which the tuner calls.

_original_ensure_active_values: Any = None


def _ensure_active_values(self: Any) -> None:
    """Keras Tuner's version, keeping a Fixed value whenever one of its namesakes is active.
    (A lone Fixed keeps the value it is given: the tuner sets pinned parents to reach every
    condition.)"""
    import keras_tuner as kt

    for hp in self.space:
        if self.is_active(hp):
            if isinstance(hp, kt.engine.hyperparameters.Fixed) and len(self._hps[hp.name]) > 1:
                self.values[hp.name] = hp.value
            elif hp.name not in self.values:
                self.values[hp.name] = hp.random_sample()
        elif not self.is_active(hp.name):  # no other hyperparameter of this name is active
            self.values.pop(hp.name, None)


def _save_json_atomically(path: str, obj: Any) -> str:
    """Keras Tuner's `utils.save_json`, writing through search.runs.atomic: its own writes the
    file in place, so a kill mid-write left an empty oracle.json that no resume could read."""
    from search.runs import atomic

    text = json.dumps(obj)
    atomic.write_text(Path(path), text)
    return text


def patch_keras_tuner() -> None:
    """Install the fixes (idempotent). Relies on `HyperParameters._hps`,
    `keras_tuner.src.utils.save_json`, which every state file goes through, and
    `keras_tuner.src.config.DEBUG`: True in every release, it makes the tuner print each failed
    trial's whole traceback to the console, where our one line and error.txt say it better."""
    global _original_ensure_active_values
    import keras_tuner as kt
    from keras_tuner.src import config, utils

    config.DEBUG = False
    if _original_ensure_active_values is None:
        _original_ensure_active_values = kt.HyperParameters.ensure_active_values
        kt.HyperParameters.ensure_active_values = _ensure_active_values  # type: ignore[method-assign]
    utils.save_json = _save_json_atomically


def requeued_trials(oracle: Any) -> list[str]:
    """The trials a reloaded Keras Tuner oracle will run again: those that were running when
    its process stopped (`Oracle.reload` moves them to the private `_retry_queue`).

    A process killed inside `Oracle.create_trial`, after the new trial's trial.json and
    before oracle.json, leaves a RUNNING trial that oracle.json does not know: `reload` loads
    it into `trials` but queues nothing, so it would hold a slot of max_trials and never
    run. Such trials are queued here too."""
    queued = list(oracle._retry_queue)
    ongoing = {t.trial_id for t in oracle.ongoing_trials.values()}
    for trial_id, trial in sorted(oracle.trials.items()):
        if trial.status == "RUNNING" and trial_id not in queued and trial_id not in ongoing:
            oracle._retry_queue.append(trial_id)
            queued.append(trial_id)
    return queued


def drop_requeued(oracle: Any, trial_id: str) -> None:
    oracle._retry_queue.remove(trial_id)


def set_project_dir(oracle: Any, directory: Path, project: str) -> None:
    """Where an oracle of our own (Optuna's) keeps Keras Tuner's files of its trials, set
    before any tuner is built on it. Relies on `Oracle._set_project_dir`."""
    oracle._set_project_dir(str(directory), project)


def start_trial(oracle: Any, tuner_id: str, trial: Any) -> None:
    """Hand out `trial`, made by an oracle of our own (Optuna's), as `Oracle.create_trial`
    does: ongoing, saved (its trial.json, then oracle.json) and displayed. Relies on
    `Oracle.start_order`, `Oracle._save_trial` and `Oracle._display`."""
    oracle.ongoing_trials[tuner_id] = trial
    oracle.trials[trial.trial_id] = trial
    oracle.start_order.append(trial.trial_id)
    oracle._save_trial(trial)
    oracle.save()
    oracle._display.on_trial_begin(trial)


# TensorFlow 2.16-2.21 ---------------------------------------------------------------------
# Every traced `tf.custom_gradient` (Keras' optimizer all-reduce is one) registers its
# gradient function in `ops._gradient_registry._registry` under a fresh name and never
# removes it (tensorflow/tensorflow#97697, #27492); its closure keeps the whole traced graph
# of a trial alive. search.engine.memory drops a finished trial's entries.

CUSTOM_GRADIENT_PREFIX = "CustomGradient-"


def gradient_registry() -> dict | None:
    """TensorFlow's global {op type: gradient function} table, or None if it moved."""
    try:
        from tensorflow.python.framework import ops

        table = ops._gradient_registry._registry
    except (ImportError, AttributeError):
        return None
    return table if isinstance(table, dict) else None


# Keras 3 ----------------------------------------------------------------------------------
def tensor_fed_to(layer: Any) -> Any:
    """The tensor of the outer graph that a nested model (a backbone) was called on. Keras 3
    has no public accessor: a nested Functional's `.input` is its own Input, not what the
    outer graph fed it. Relies on `Layer._inbound_nodes`."""
    return layer._inbound_nodes[-1].input_tensors[0]


# TensorFlow Lite ---------------------------------------------------------------------------
# A .tflite file's metadata entries (name -> bytes) are written and read with TensorFlow's own
# flatbuffer tools, `tensorflow.lite.tools.flatbuffer_utils` and the generated
# `tensorflow.lite.python.schema_py_generated`: not public API, but what the converter uses.

def tflite_with_metadata(flatbuffer: bytes, name: bytes, data: bytes) -> bytes:
    """The model `flatbuffer` with one more metadata entry `name` holding `data`."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buffer)
    named = schema.MetadataT()
    named.name, named.buffer = name, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), named]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_metadata(path: Path) -> dict[bytes, bytes]:
    """A .tflite file's metadata entries."""
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    return {item.name: bytes(np.asarray(model.buffers[item.buffer].data, np.uint8)) for item in model.metadata or []}


# Optuna 5.x ------------------------------------------------------------------------------
def trial_id(trial: Any) -> int:
    """The storage's id of an Optuna trial (`Trial._trial_id`, `FrozenTrial._trial_id`): the
    storages' public methods (`record_heartbeat`, `set_trial_user_attr`) take it, and no public
    accessor gives it."""
    return int(trial._trial_id)


def set_user_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Set a user attribute on a running trial of another process. `optuna.Trial(study, id)`
    would also run the sampler's `before_trial` on it; this writes the attribute alone.
    Relies on `Study._storage` (its `set_trial_user_attr` is public)."""
    study._storage.set_trial_user_attr(trial_id(trial), key, value)


def stale_trial_ids(study: Any) -> list[int]:
    """The running trials whose Optuna heartbeat is older than the storage's grace period.
    `optuna.storages.fail_stale_trials` fails all of them at once; the caller here first
    leaves out those whose process is known to be alive. Relies on `Study._storage`,
    `BaseHeartbeat._get_stale_trial_ids` and `Study._study_id`."""
    return list(study._storage._get_stale_trial_ids(study._study_id))
