"""The search loop: Keras Tuner's engine driving our trials. The only module that touches
keras-tuner internals.

Keras Tuner keeps the oracle state (which values to try, what finished, resume); this
module builds, trains and saves one trial from those values, reports it to the hooks, and
turns every way a trial can go wrong into a FAILED trial instead of a dead search.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf
from keras_tuner.src.engine import base_tuner

from search import models, schedules
from search.data import ImageData
from search.declare import Search
from search.errors import SearchError
from search.hooks import COMPLETED, FAILED, KILLED, PRUNED, HookList, SearchInfo, TrialInfo, TrialResult
from search.memory import TrialMemory
from search.results import trial_record, write_json, write_trials_csv
from search.space import Space
from search.validation import ValidationPass

MAX_CONSECUTIVE_FAILURES = 3

# Keras says this at the end of every validation pass over a dataset of unknown length
# (ours, since unreadable images are dropped): it is not a problem with the data.
warnings.filterwarnings("ignore", message="Your input ran out of data")
# Every trial is a new model with new functions: TensorFlow calls that "retracing" and warns.
tf.get_logger().setLevel("ERROR")


def _ensure_active_values(self: kt.HyperParameters) -> None:
    """Keras Tuner 1.4.8's version drops a value when any one of several hyperparameters of
    that name is inactive, so `hp.Fixed("learning_rate", 5e-4, parent_values=["Xception"])`
    next to `hp.Fixed("learning_rate", 5e-5, parent_values=["DenseNet201"])` lost both, and
    the grid kept the previous trial's value for the one that is active now. (A lone Fixed
    keeps the value it is given: the tuner sets pinned parents to reach every condition.)"""
    for hp in self.space:
        if self.is_active(hp):
            if isinstance(hp, kt.engine.hyperparameters.Fixed) and len(self._hps[hp.name]) > 1:
                self.values[hp.name] = hp.value
            elif hp.name not in self.values:
                self.values[hp.name] = hp.random_sample()
        elif not self.is_active(hp.name):  # no other hyperparameter of this name is active
            self.values.pop(hp.name, None)


kt.HyperParameters.ensure_active_values = _ensure_active_values  # type: ignore[method-assign]


def objective(search: Search) -> kt.Objective:
    direction = "min" if "loss" in search.objective else "max"
    return kt.Objective(search.objective, direction)


def keras_tuner_seed(seed: int) -> int:
    """`seed` as Keras Tuner can take it. Its oracles run `self.seed = seed or
    random.randint(1, 10000)`, so seed 0, our default, would try a different sequence of
    values in every run. Seeds are 0 to MAX_SEED (Search checks), so seed + 1 is distinct
    and non-zero."""
    return seed + 1


def make_oracle(search: Search, seed: int) -> kt.Oracle:
    """The Keras Tuner oracle for `search.algorithm` (Optuna's live in search.optuna_oracle)."""
    common: dict[str, Any] = {
        "objective": objective(search),
        "seed": keras_tuner_seed(seed),
        "max_retries_per_trial": 0,
        "max_consecutive_failed_trials": MAX_CONSECUTIVE_FAILURES,
    }
    options = dict(search.options)
    if search.algorithm == "random":
        return kt.oracles.RandomSearchOracle(max_trials=search.max_trials, **common, **options)
    if search.algorithm == "grid":
        return kt.oracles.GridSearchOracle(max_trials=search.max_trials, **common, **options)
    if search.algorithm == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=search.max_trials, **common, **options)
    if search.algorithm == "hyperband":
        options.setdefault("factor", 3)
        return kt.oracles.HyperbandOracle(max_epochs=search.epochs, **common, **options)
    try:
        from search import optuna_oracle
    except ImportError:
        raise SearchError(
            f"algorithm {search.algorithm!r} needs the Optuna adapter (search/optuna_oracle.py), "
            "which is not installed; use random, grid, bayesian or hyperband."
        ) from None
    return optuna_oracle.make_oracle(search, **{**common, "seed": seed})  # Optuna's samplers take 0


class Recycle(Exception):
    """This process ran its `trials_per_process`: the search goes on in a fresh one."""


class _SpaceHyperModel(kt.HyperModel):
    """Declares the space's hyperparameters; models are built in `SpaceTuner.run_trial`.

    Keras Tuner calls `build` when the tuner is created, only to discover the space, so
    it must stay cheap: building a DenseNet201 here would cost seconds and a download.
    """

    def __init__(self, space: Space):
        super().__init__(name=space.name)
        self.space = space

    def build(self, hp: kt.HyperParameters) -> None:
        self.space.declare(hp)


class _EpochHook(keras.callbacks.Callback):
    def __init__(self, hooks: HookList, search: SearchInfo, trial: TrialInfo):
        super().__init__()
        self.hooks, self.search, self.trial = hooks, search, trial

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.hooks.on_epoch_end(self.search, self.trial, epoch, logs)


class SpaceTuner(base_tuner.BaseTuner):
    """Runs a space's trials on one dataset; see `search.run` for how it is assembled."""

    def __init__(
        self,
        space: Space,
        data: ImageData,
        info: SearchInfo,
        hooks: HookList,
        strategy: tf.distribute.Strategy,
        oracle: kt.Oracle,
        *,
        overwrite: bool = False,
        verbose: int = 2,
        trials_per_process: int | None = None,
    ):
        self.space, self.data, self.info, self.hooks = space, data, info, hooks
        self.trials_per_process = trials_per_process
        self._trials_here = 0
        self.strategy = strategy
        self.verbose = verbose
        self._results: dict[str, TrialResult] = {}
        self._memory = TrialMemory()
        self.last_error: str | None = None
        super().__init__(
            oracle=oracle,
            hypermodel=_SpaceHyperModel(space),
            directory=str(info.space_dir),
            project_name=getattr(oracle, "tuner_project", "tuner"),  # Optuna: one per worker process
            overwrite=overwrite,
        )

    # Paths -------------------------------------------------------------------------------
    def trial_dir(self, trial_id: str) -> Path:
        return self.info.space_dir / "trials" / trial_id

    def trial_number(self, trial: kt.engine.trial.Trial) -> int:
        if hasattr(self.oracle, "trial_number"):  # shared Optuna study: numbered across workers
            return self.oracle.trial_number(trial.trial_id)
        return sorted(self.oracle.trials).index(trial.trial_id) + 1

    # Keras Tuner's hooks -----------------------------------------------------------------
    def on_search_begin(self) -> None:
        self.hooks.on_search_begin(self.info)

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        self._memory.begin()
        self._current = self._trial_info(trial)
        self.hooks.on_trial_begin(self.info, self._current)

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        result = self._results.pop(trial.trial_id, None)
        if result is None:  # failed before run_trial could record anything
            result = TrialResult(status=FAILED, history={}, epochs_run=0, seconds=0.0, error=trial.message)
        if result.status == FAILED:
            self.last_error = result.error
        if hasattr(self.oracle, "record_result"):  # Optuna: its told values, and latency_ms it measured
            self.oracle.record_result(trial.trial_id, result)
        # Record, then let the oracle save: a kill between the two re-runs this trial on
        # resume rather than losing its record. end_trial raises when too many trials
        # failed in a row; this trial is still written and reported before that stops us.
        self._record(self._current, result)
        stop: RuntimeError | None = None
        try:
            super().on_trial_end(trial)
        except RuntimeError as e:
            stop = e
        write_trials_csv(self.info.space_dir)
        self.hooks.on_trial_end(self.info, self._current, result)
        self._memory.release()  # one full gc.collect(): a second one cost ~1 s a trial
        if stop is not None:
            raise stop
        self._trials_here += 1
        if self.trials_per_process and self._trials_here >= self.trials_per_process:
            raise Recycle()

    def _record(self, info: TrialInfo, result: TrialResult) -> None:
        info.dir.mkdir(parents=True, exist_ok=True)
        write_json(info.dir / "result.json", trial_record(info, result))

    def _trial_info(self, trial: kt.engine.trial.Trial) -> TrialInfo:
        values = trial.hyperparameters.values
        return TrialInfo(
            trial_id=trial.trial_id,
            number=self.trial_number(trial),
            total=self.space.search.max_trials,
            values={k: v for k, v in values.items() if not k.startswith("tuner/")},
            config=self.space.trial_config(values),
            dir=self.trial_dir(trial.trial_id),
            epochs=int(values.get("tuner/epochs", self.space.search.epochs)),
            initial_epoch=int(values.get("tuner/initial_epoch", 0)),
        )

    # One trial ---------------------------------------------------------------------------
    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        info = self._current
        info.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        history: dict[str, list[float]] = {}
        try:
            fit = self._fit(trial, info, history)
        except KeyboardInterrupt:
            killed = TrialResult(
                status=KILLED, history=history, epochs_run=len(history.get("loss", [])),
                seconds=time.monotonic() - started, error="interrupted",
            )
            self._record(info, killed)  # re-run on resume (Keras Tuner still has it RUNNING)
            write_trials_csv(self.info.space_dir)
            self.hooks.on_trial_end(self.info, info, killed)
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes a FAILED trial
            message = _failure_message(e)
            (info.dir / "error.txt").write_text(traceback.format_exc())
            self._results[trial.trial_id] = TrialResult(
                status=FAILED, history=history, epochs_run=len(history.get("loss", [])),
                seconds=time.monotonic() - started, error=message,
            )
            raise kt.errors.FailedTrialError(message) from e
        if getattr(self.oracle, "trial_status", lambda trial_id: None)(trial.trial_id) == PRUNED:
            fit.status = PRUNED  # stopped by the pruner; its model and metrics are kept like any other
        self._results[trial.trial_id] = fit
        return fit.best  # the best epoch's metrics: what the oracle scores the trial by

    def _fit(self, trial: kt.engine.trial.Trial, info: TrialInfo, history: dict[str, list[float]]) -> TrialResult:
        search, config, data = self.space.search, info.config, self.data
        replicas = self.strategy.num_replicas_in_sync
        keras.utils.set_random_seed(self.info.seed * 1000 + info.number)
        with self.strategy.scope():
            model = models.build_model(config, data.num_classes)
            models.compile_model(model, config, replicas=replicas)
        resume_from = trial.hyperparameters.values.get("tuner/trial_id")
        if resume_from:  # Hyperband: continue the weights of the trial this one extends
            model.load_weights(self.trial_dir(resume_from) / "model.keras")

        global_batch = config.batch_size * replicas
        train = data.dataset(
            "train", config.image_size, global_batch, augmentation=config.augmentation,
            shuffle=True, seed=self.info.seed + info.number, repeat=search.steps_per_epoch is not None,
        )
        val = data.dataset("val", config.image_size, global_batch)
        schedule = schedules.learning_rate_schedule(config, info.epochs, replicas)
        target = objective(search)
        # Validates each epoch with predict and keeps the best epoch's probabilities; first,
        # so every callback after it sees val_loss and val_accuracy.
        validation = ValidationPass(val, data.labels("val"), monitor=target.name, mode=target.direction)
        callbacks: list[keras.callbacks.Callback] = [
            validation,
            keras.callbacks.LearningRateScheduler(schedule),
            keras.callbacks.TerminateOnNaN(),
            # Always restore the best epoch: it is the one the oracle scores the trial by.
            keras.callbacks.EarlyStopping(
                monitor=target.name, mode=target.direction, restore_best_weights=True,
                patience=search.early_stopping or info.epochs + 1,
            ),
            _EpochHook(self.hooks, self.info, info),
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: [history.setdefault(k, []).append(float(v)) for k, v in logs.items()]
            ),
            *getattr(self.oracle, "keras_callbacks", lambda trial_id: [])(trial.trial_id),
        ]
        started = time.monotonic()
        fit = model.fit(
            train, epochs=info.epochs, initial_epoch=info.initial_epoch,
            steps_per_epoch=search.steps_per_epoch, callbacks=callbacks, verbose=self.verbose,
            shuffle=False,  # the dataset is shuffled already
        )
        seconds = time.monotonic() - started
        losses = fit.history.get("loss", [])
        if any(not math.isfinite(v) for v in losses):
            raise kt.errors.FailedTrialError(
                f"the loss became NaN at epoch {len(losses)}; try a lower learning_rate"
            )
        if validation.probabilities is None:
            raise kt.errors.FailedTrialError(f"no epoch ran (epochs {info.initial_epoch} to {info.epochs})")
        return self._save(info, model, fit, seconds, validation.probabilities)

    def _save(
        self, info: TrialInfo, model: keras.Model, fit: keras.callbacks.History, seconds: float,
        probabilities: np.ndarray,
    ) -> TrialResult:
        search, data = self.space.search, self.data
        model_path = info.dir / "model.keras"
        # An uncompiled view of the same layers: .keras files always carry the optimizer's
        # state (twice the weights for Adam), which serving and ensembles never use.
        keras.Model(model.inputs, model.outputs, name=model.name).save(model_path)
        probabilities_path = info.dir / "val_probabilities.npy"
        np.save(probabilities_path, probabilities.astype(np.float32))
        labels_path = self.info.space_dir / "val_labels.npy"
        if not labels_path.exists():
            np.save(labels_path, data.labels("val"))

        target = objective(search)
        scores = fit.history.get(target.name, [])
        pick = np.argmin if target.direction == "min" else np.argmax
        best_epoch = int(pick(scores)) if scores else 0
        best = {k: float(v[best_epoch]) for k, v in fit.history.items() if len(v) > best_epoch}
        epochs_run = len(fit.history.get("loss", []))
        steps = search.steps_per_epoch
        train_images = steps * info.config.batch_size * self.strategy.num_replicas_in_sync if steps else data.count("train")
        result = TrialResult(
            status=COMPLETED,
            history={k: [float(x) for x in v] for k, v in fit.history.items()},
            epochs_run=epochs_run,
            seconds=seconds,
            best=best,
            params=models.count_params(model),
            size_mb=models.model_size_mb(model_path),
            model_path=model_path,
            val_probabilities_path=probabilities_path,
            train_images=train_images,
        )
        self._keep_best_model(info, result)
        return result

    def _keep_best_model(self, info: TrialInfo, result: TrialResult) -> None:
        target = objective(self.space.search)
        score = result.best.get(target.name)
        best_file = self.info.space_dir / "best.json"
        previous = json.loads(best_file.read_text()) if best_file.exists() else None
        better = previous is None or (
            score is not None
            and (score < previous["score"] if target.direction == "min" else score > previous["score"])
        )
        if better and result.model_path is not None:
            tmp = self.info.space_dir / f"best.keras.{os.getpid()}.tmp"  # per process: workers share it
            shutil.copyfile(result.model_path, tmp)
            tmp.replace(self.info.space_dir / "best.keras")
            write_json(best_file, {"trial_id": info.trial_id, "score": score, "objective": target.name})
            if self.space.search.keep_models == "best" and previous:
                (self.trial_dir(previous["trial_id"]) / "model.keras").unlink(missing_ok=True)
        elif self.space.search.keep_models == "best" and result.model_path is not None:
            result.model_path.unlink(missing_ok=True)


def _failure_message(error: BaseException) -> str:
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return "out of memory; try a smaller batch_size or image_size"
    if isinstance(error, (SearchError, kt.errors.FailedTrialError)):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
