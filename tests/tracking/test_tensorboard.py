"""--tensorboard: each trial's scalars and hyperparameters, readable by TensorBoard's HParams dashboard."""

from __future__ import annotations

from conftest import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from search import run


def test_every_trial_gets_its_scalars_and_hparams(tmp_path, digits_folders):
    assert run.main([str(TINY), "--data", str(digits_folders), "--max-trials", "2", "--runs-dir", str(tmp_path),
                     "--tensorboard", "--no-tracking", "--no-ensemble", "--quiet"]) == 0
    root = tmp_path / "tiny" / "tensorboard"
    top = EventAccumulator(str(root), size_guidance={"tensors": 0})
    top.Reload()
    config = plugin_data_pb2.HParamsPluginData.FromString(top.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert {h.name for h in config.experiment.hparam_infos} >= {"units", "batch_size", "learning_rate"}
    assert "val_f1" in {m.name.tag for m in config.experiment.metric_infos}
    for trial in ("0", "1"):
        events = EventAccumulator(str(root / trial), size_guidance={"tensors": 0})
        events.Reload()
        tags = set(events.Tags()["tensors"])
        assert {"val_accuracy", "val_loss", "learning_rate", "best_val_accuracy"} <= tags
        assert [e.step for e in events.Tensors("val_accuracy")] == [1, 2]
        session = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        assert session.session_start_info.hparams["units"].number_value > 0
