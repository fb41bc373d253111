"""TensorBoard for Keras users who expect it (`--tensorboard`, `Search(tensorboard=True)`).

runs/<space>/tensorboard/ holds one run folder per trial with its per-epoch scalars (every
metric the trial logs, and the learning rate) and its hyperparameters as the HParams
dashboard's summaries, and the experiment's own summary (each hyperparameter's domain, the
metrics to compare) at the top. `tensorboard --logdir runs/<space>/tensorboard` shows them.
Needs the `tensorboard` package (not installed with TensorFlow since 2.21).
"""

from __future__ import annotations

from typing import Any

import keras_tuner as kt
import tensorflow as tf

from search import metrics
from search.core.hooks import SearchHooks, SearchInfo, TrialInfo, TrialResult
from search.errors import SearchError
from search.runs.layout import SpaceDir
from search.space import Space

try:
    from tensorboard.plugins.hparams import api as hparams_api
except ImportError:  # an optional extra: checked when asked for
    hparams_api = None


def _domain(param: Any) -> Any:
    kinds = kt.engine.hyperparameters
    if isinstance(param, kinds.Fixed):
        return hparams_api.Discrete([param.value])
    if isinstance(param, kinds.Boolean):
        return hparams_api.Discrete([True, False])
    if isinstance(param, kinds.Choice):
        return hparams_api.Discrete(list(param.values))
    if isinstance(param, kinds.Int):
        return hparams_api.IntInterval(int(param.min_value), int(param.max_value))
    return hparams_api.RealInterval(float(param.min_value), float(param.max_value))


def _loggable(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardWriter(SearchHooks):
    def __init__(self, space: Space):
        if hparams_api is None:
            raise SearchError("--tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or pip install -e '.[tensorboard]').")
        self.space = space
        self._writers: dict[str, Any] = {}

    def on_search_begin(self, search: SearchInfo) -> None:
        root = SpaceDir(search.space_dir).tensorboard
        hp = kt.HyperParameters()
        self.space.declare(hp)
        seen: dict[str, Any] = {}
        for param in hp.space:  # one domain a name (conditional namesakes: the first)
            seen.setdefault(param.name, param)
        self._hparams = {name: hparams_api.HParam(name, _domain(param)) for name, param in seen.items()}
        with tf.summary.create_file_writer(str(root)).as_default():
            hparams_api.hparams_config(
                hparams=list(self._hparams.values()),
                metrics=[hparams_api.Metric(name, display_name=name) for name in metrics.METRICS],
            )

    def on_trial_begin(self, search: SearchInfo, trial: TrialInfo) -> None:
        writer = tf.summary.create_file_writer(str(SpaceDir(search.space_dir).tensorboard / trial.trial_id))
        self._writers[trial.trial_id] = writer
        with writer.as_default():
            values = {self._hparams[k]: _loggable(v) for k, v in trial.values.items() if k in self._hparams}
            hparams_api.hparams(values, trial_id=trial.trial_id)

    def on_epoch_end(self, search: SearchInfo, trial: TrialInfo, epoch: int, logs: dict[str, float]) -> None:
        writer = self._writers.get(trial.trial_id)
        if writer is None:
            return
        with writer.as_default():
            for key, value in logs.items():
                if isinstance(value, (int, float)):
                    tf.summary.scalar(key, float(value), step=epoch + 1)  # as Keras prints epochs

    def on_trial_end(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> None:
        writer = self._writers.pop(trial.trial_id, None)
        if writer is None:
            return
        with writer.as_default():
            for key, value in result.best.items():  # the best epoch: what the HParams table compares
                tf.summary.scalar(f"best_{key}", float(value), step=0)
        writer.close()

    def on_search_end(self, search: SearchInfo, status: str) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
