"""Each third-party behaviour search.compat relies on or patches, checked against the installed
library: when one of these fails after an upgrade, the patch is wrong or no longer needed."""

from __future__ import annotations

import json

import keras
import keras_tuner as kt
import numpy as np
import optuna
import tensorflow as tf

from search import compat


def _two_fixed_namesakes() -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hp.Choice("backbone", ["Xception", "DenseNet201"])
    hp.Fixed("learning_rate", 5e-4, parent_name="backbone", parent_values=["Xception"])
    hp.Fixed("learning_rate", 5e-5, parent_name="backbone", parent_values=["DenseNet201"])
    return hp


def test_keras_tuner_still_drops_a_fixed_value_with_an_inactive_namesake():
    compat.patch_keras_tuner()
    hp = _two_fixed_namesakes()
    hp.values["backbone"] = "Xception"
    compat._original_ensure_active_values(hp)  # Keras Tuner's own
    assert "learning_rate" not in hp.values  # the bug: if this fails, upstream fixed it: drop the patch
    hp.ensure_active_values()  # ours
    assert hp.values["learning_rate"] == 5e-4


def test_keras_tuner_state_goes_through_utils_save_json_and_is_now_written_atomically(tmp_path, monkeypatch):
    from keras_tuner.src import config, utils

    compat.patch_keras_tuner()
    assert config.DEBUG is False
    written = []
    monkeypatch.setattr("search.runs.atomic.write_text", lambda path, text: written.append(path) or path.write_text(text))
    oracle = kt.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=1)
    oracle._set_project_dir(str(tmp_path), "p")
    oracle.save()
    assert written and json.loads(written[0].read_text())["seed"]
    assert utils.save_json is compat._save_json_atomically


def test_a_reloaded_oracle_queues_its_running_trials_in_the_private_retry_queue(tmp_path):
    oracle = kt.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=3, seed=1)
    oracle._set_project_dir(str(tmp_path), "p")
    hp = kt.HyperParameters()
    hp.Int("units", 1, 9)
    oracle.update_space(hp)
    trial = oracle.create_trial("tuner0")
    again = kt.oracles.RandomSearchOracle(objective="val_accuracy", max_trials=3, seed=1)
    again._set_project_dir(str(tmp_path), "p")
    again.reload()
    assert compat.requeued_trials(again) == [trial.trial_id]
    compat.drop_requeued(again, trial.trial_id)
    assert again._retry_queue == []


def test_tensorflow_still_keeps_every_traced_custom_gradient_in_its_registry():
    table = compat.gradient_registry()
    assert isinstance(table, dict)
    before = {n for n in table if n.startswith(compat.CUSTOM_GRADIENT_PREFIX)}

    @tf.custom_gradient
    def double(x):
        return 2 * x, lambda dy: 2 * dy

    tf.function(lambda x: double(x)).get_concrete_function(tf.TensorSpec([], tf.float32))
    added = {n for n in table if n.startswith(compat.CUSTOM_GRADIENT_PREFIX)} - before
    assert added  # if this fails, TensorFlow frees them itself (or moved the table): see search.engine.memory
    for name in added:
        del table[name]


def test_keras_still_needs_inbound_nodes_to_find_what_fed_a_nested_model():
    own = keras.Input((4,))
    inner = keras.Model(own, keras.layers.Dense(2)(own), name="inner")  # Functional, as keras.applications' are
    inputs = keras.Input((3,))
    fed = keras.layers.Dense(4, name="before")(inputs)
    model = keras.Model(inputs, inner(fed))
    assert inner.input is own  # the public accessor gives the nested model's own Input, not what fed it
    assert compat.tensor_fed_to(model.get_layer("inner")) is fed


def test_optuna_trials_still_carry_their_storage_id_and_rdb_its_stale_query(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(compat.trial_id(trial))
    assert compat.trial_id(study.get_trials()[0]) == compat.trial_id(trial)
    import time

    time.sleep(2.1)
    assert compat.stale_trial_ids(study) == [compat.trial_id(trial)]
    assert np.isscalar(compat.trial_id(trial))
    compat.set_user_attr(study, study.get_trials()[0], "lost", {"trial": 0})
    assert study.get_trials()[0].user_attrs["lost"] == {"trial": 0}
