"""A search of staged trials end to end: the feature cache shared by its trials, both stages in
trials.csv and MLflow, a whole model saved per trial, and `--fresh` removing the cache."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from search import run
from search.data.dataset import open_data
from search.declare import Data
from search.engine import strategy as strategies
from search.models import build
from search.runs.layout import SpaceDir

SPACE = """
from search import Data, Search

data = Data("builtin:digits")
search = Search(algorithm="random", max_trials=2, epochs=3, seed=1)


def hyperparameters(hp):
    hp.Fixed("backbone", "MobileNetV2")
    hp.Fixed("weights", {weights!r})
    hp.Fixed("image_size", 32)
    hp.Fixed("fine_tune", "probe_then_all")
    hp.Fixed("probe_epochs", 1)
    hp.Fixed("fine_tune_learning_rate", 1e-4)
    hp.Choice("head_width", [16, 32])
    hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")
"""


def test_a_search_of_two_stage_trials_shares_one_cache_and_logs_both_stages(
        tmp_path, digits_split_folders, notop_weights, monkeypatch, capsys):
    space = tmp_path / "staged.py"
    space.write_text(SPACE.format(weights=str(notop_weights)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    runs = tmp_path / "runs"
    args = [str(space), "--data", str(digits_split_folders), "--runs-dir", str(runs), "--quiet", "--no-ensemble"]
    assert run.main(args) == 0
    out = capsys.readouterr().out
    folder = SpaceDir(runs / "staged")

    # One computation of train and val features, used by both trials.
    assert "2 hit(s), 2 computed" in out, out[-2000:]
    assert len(list(folder.features.glob("*.npy"))) == 2
    table = pd.read_csv(folder.trials_csv)
    assert set(table["stage"]) <= {"probe", "fine_tune"} and table["stage"].notna().all()

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    trials = [r for r in client.search_runs(experiments) if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2
    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    pixels = np.concatenate([x for x, _ in data.dataset("val", 32, 32).as_numpy_iterator()])
    for trial_run in trials:
        stages = [m.value for m in client.get_metric_history(trial_run.info.run_id, "stage")]
        assert stages == [1.0, 2.0, 2.0]  # the probe epoch, then two fine-tuning epochs
        record = json.loads((folder.trials / trial_run.data.tags["trial_id"] / "result.json").read_text())
        assert record["history"]["stage"] == stages
        # The saved model is the whole model: raw pixels in, its recorded val probabilities out.
        model = keras.models.load_model(record["model_path"])
        np.testing.assert_allclose(model.predict(pixels, verbose=0), np.load(record["val_probabilities_path"]),
                                   atol=1e-4)

    # --fresh removes the cache with the rest of the search.
    assert folder.features in folder.written_by_a_search()
    folder.remove_search()
    assert not folder.features.exists()


def test_mixed_precision_and_xla_resolve_to_off_on_this_cpu():
    strategy = strategies.detect()
    if strategies._gpus() or "TPU" in type(strategy).__name__:
        pytest.skip("this machine has an accelerator")
    try:
        assert strategies.set_mixed_precision(True, strategy) == "float32"
        assert strategies.jit_compile(True, strategy) is False
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_the_xla_setting_reaches_compile(tmp_path):
    from search.hparams import TrialConfig

    config = TrialConfig(backbone="MobileNet", weights="none", image_size=32)
    model = build.build_model(config, 3)
    try:
        build.set_jit_compile(True)
        build.compile_model(model, config)
        assert model.jit_compile is True
        build.set_jit_compile(False)
        build.compile_model(model, config)
        assert model.jit_compile is False
    finally:
        build.set_jit_compile(False)


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    """As the time budget's callback does: asks the model to stop."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def test_a_probe_stopped_by_the_budget_or_a_pruner_is_not_fine_tuned(tmp_path, digits_split_folders, notop_weights):
    import tensorflow as tf

    from search.engine import trial
    from search.hparams import TrialConfig
    from search.models.features import FeatureCache

    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    config = TrialConfig(backbone="MobileNetV2", weights=str(notop_weights), image_size=32, fine_tune="probe_then_all",
                         probe_epochs=2, head_width=16)
    cache = FeatureCache(tmp_path / "features")
    stopped = trial.train(config, data, tf.distribute.get_strategy(), epochs=4, seed=0, shuffle_seed=0,
                          feature_cache=cache, callbacks=[_StopAfterFirstEpoch()])
    assert stopped.history["stage"] == [trial.PROBE]
    followed = trial.train(config, data, tf.distribute.get_strategy(), epochs=3, seed=0, shuffle_seed=0,
                           feature_cache=cache)
    assert followed.history["stage"] == [trial.PROBE, trial.PROBE, trial.FINE_TUNE]


@pytest.mark.parametrize("setting", [{"cached_views": 0}, {"cached_views": 2.5}, {"feature_cache_gb": 0},
                                     {"feature_cache_gb": "10"}])
def test_impossible_cache_settings_are_refused_naming_the_setting(setting):
    from search.declare import Search
    from search.errors import SpaceError

    with pytest.raises(SpaceError, match=f"Search\\({next(iter(setting))}="):
        Search(**setting)
