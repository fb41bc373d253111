"""A search of staged trials end to end: the feature cache shared by its trials, both stages in
trials.csv and MLflow, a whole model saved per trial, and `--fresh` removing the cache."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import NOTOP_BACKBONE
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
    hp.Fixed("backbone", "MobileNet")
    hp.Fixed("weights", {weights!r})
    hp.Fixed("image_size", 32)
    hp.Fixed("fine_tune", "probe_then_all")
    hp.Fixed("probe_epochs", 1)
    hp.Fixed("fine_tune_learning_rate", 1e-4)
    hp.Choice("head_width", [16, 32])
    hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")
"""


@pytest.mark.slow  # in CI, the halving search below checks the same in one search
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


@pytest.mark.slow  # an edge of the two stages; CI runs the halving search below
def test_a_probe_stopped_by_the_budget_or_a_pruner_is_not_fine_tuned(tmp_path, digits_split_folders, notop_weights):
    import tensorflow as tf

    from search.engine import trial
    from search.hparams import TrialConfig
    from search.models.features import FeatureCache

    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    config = TrialConfig(backbone=NOTOP_BACKBONE, weights=str(notop_weights), image_size=32, fine_tune="probe_then_all",
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


HALVING = SPACE.replace('max_trials=2, epochs=3, seed=1', 'max_trials=3, epochs=2, seed=2, fine_tune_best=0.5, min_probes=1') + '''

def callbacks(hp):
    import os

    import keras

    class Interrupt(keras.callbacks.Callback):
        """Ctrl-C as fine-tuning (the trial's second fit) begins, while the marker file is there."""

        fits = 0

        def on_train_begin(self, logs=None):
            self.fits += 1
            if self.fits == 2 and os.path.exists({marker!r}):
                os.remove({marker!r})
                raise KeyboardInterrupt

    return [Interrupt()]
'''


def _halving_search(tmp_path, weights, data, monkeypatch, *, interrupt: bool):
    marker = tmp_path / "interrupt"
    if interrupt:
        marker.touch()
    space = tmp_path / "halving.py"
    space.write_text(HALVING.format(weights=str(weights), marker=str(marker)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = [str(space), "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--quiet", "--no-ensemble"]
    return args, SpaceDir(tmp_path / "runs" / "halving"), uri


def _check_halving(folder, out, uri=None):
    """Each trial decided against the probes recorded before it, and said so everywhere (and in
    MLflow when `uri` is its store)."""
    table = pd.read_csv(folder.trials_csv, dtype={"trial_id": str}).set_index("trial_id")
    assert len(table) == 3
    client = MlflowClient(uri) if uri else None
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()]) if "mlflow.parentRunId" in r.data.tags} if client else {}
    probes = []
    for trial in folder.trial_dirs():
        decision = json.loads((trial.path / "probe.json").read_text())
        record = json.loads(trial.record.read_text())
        # Ranked among the probes recorded before it (min_probes=1), the best half goes on.
        others = [p["score"] for p in probes]
        assert decision["score"] == record["history"]["val_accuracy"][0]
        assert decision["fine_tune"] == (sum(s > decision["score"] for s in others) < max(1, (len(others) + 1) // 2))
        probes.append(decision)
        if decision["fine_tune"]:
            assert record["status"] == "COMPLETED" and record["history"]["stage"] == [1.0, 2.0]
            assert f"Trial {trial.id} COMPLETED" in out and "(fine-tuned: probe" in out
        else:  # ended after its probe, with its probe's result
            assert record["status"] == "PRUNED" and record["history"]["stage"] == [1.0]
            assert table.loc[trial.id, "stage"] == "probe" and table.loc[trial.id, "epochs_run"] == 1
            assert f"Trial {trial.id} PRUNED" in out and "(probe only: probe" in out
        if client is not None:
            assert runs[trial.id].data.tags["note"] == record["note"]
            assert runs[trial.id].data.tags["status"] == record["status"]
            assert [m.value for m in client.get_metric_history(runs[trial.id].info.run_id, "stage")] == \
                record["history"]["stage"]
    assert {p["fine_tune"] for p in probes} == {True, False}, probes
    # best.keras is the best fine-tuned trial's model.
    best = json.loads(folder.best_record.read_text())["trial_id"]
    assert table.loc[best, "status"] == "COMPLETED"


def test_fine_tune_best_fine_tunes_the_best_probes_and_ends_the_others_after_their_probe(
        tmp_path, digits_split_folders, notop_weights, monkeypatch, capsys):
    """Also what a search of staged trials shows (the slow test above, in one search): one
    cache computed once, both stages in MLflow, a whole model saved, `--fresh` removing the cache."""
    args, folder, uri = _halving_search(tmp_path, notop_weights, digits_split_folders, monkeypatch, interrupt=False)
    assert run.main(args) == 0
    out = capsys.readouterr().out
    _check_halving(folder, out, uri)
    assert "4 hit(s), 2 computed" in out, out[-2000:]  # train and val features, once for the three trials
    assert len(list(folder.features.glob("*.npy"))) == 2
    data = open_data(Data(str(digits_split_folders)), runs_dir=tmp_path)
    pixels = np.concatenate([x for x, _ in data.dataset("val", 32, 32).as_numpy_iterator()])
    tuned = next(t for t in folder.trial_dirs() if json.loads((t.path / "probe.json").read_text())["fine_tune"])
    record = json.loads(tuned.record.read_text())
    model = keras.models.load_model(record["model_path"])  # the whole model: raw pixels in
    np.testing.assert_allclose(model.predict(pixels, verbose=0), np.load(record["val_probabilities_path"]), atol=1e-4)
    assert folder.features in folder.written_by_a_search()
    folder.remove_search()
    assert not folder.features.exists()


@pytest.mark.slow
def test_a_trial_interrupted_after_its_probe_is_run_again_on_its_recorded_decision_and_mlflow_has_both_stages(
        tmp_path, digits_split_folders, notop_weights, monkeypatch, capsys):
    args, folder, uri = _halving_search(tmp_path, notop_weights, digits_split_folders, monkeypatch, interrupt=True)
    # The first trial is fine-tuned (the best of one probe), and interrupted as fine-tuning begins.
    assert run.main([*args, "--no-tracking"]) == 130
    (first,) = folder.trial_dirs()
    decided = json.loads((first.path / "probe.json").read_text())
    assert decided["fine_tune"] is True and json.loads(first.record.read_text())["status"] == "KILLED"

    assert run.main(args) == 0
    assert json.loads((first.path / "probe.json").read_text()) == decided  # run again, not decided again
    _check_halving(folder, capsys.readouterr().out, uri)
