"""Keras Tuner's loop driving our trials, and the order in which a trial's end is written.

The oracle (Keras Tuner's, or `OptunaOracle`) keeps which values to try and what finished;
this module trains each trial through `search.engine.trial`, saves it, reports it to the
hooks, and turns every way a trial can go wrong into a FAILED trial instead of a dead search.

A trial's end is written in this order, so that a process killed between any two steps
neither loses the trial nor runs it twice:

1. its model and val probabilities (atomic writes);
2. its record, `trials/<id>/result.json`: from here on the trial is done;
3. the oracle is told (Keras Tuner's state files, or the Optuna study);
4. trials.csv, best.keras and the hooks (MLflow).

On resume, a trial the oracle still has as running but whose record says it ended is told
its recorded result instead of being run again (`reconcile`); steps 4 are redone from the
records whenever they run.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from search import compat, metrics
from search.data.dataset import ImageData
from search.engine import interrupts, trial as training
from search.engine.budget import Budget, BudgetSpent
from search.engine.hooks import COMPLETED, FAILED, KILLED, PRUNED, HookList, SearchInfo, TrialInfo, TrialResult
from search.engine.memory import TrialMemory
from search.errors import SearchError
from search.models import build
from search.models.features import FeatureCache
from search.results import records
from search.runs import atomic, faults
from search.runs.layout import SpaceDir, TrialDir
from search.runs.locks import FolderLock
from search.space import Space

# Every trial is a new model with new functions: TensorFlow calls that "retracing" and warns.
tf.get_logger().setLevel("ERROR")


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
        faults.point("epoch-end")
        interrupts.check()


class _Deadline(keras.callbacks.Callback):
    """Stops training at the budget's deadline, after the batch in progress; times the first epoch."""

    def __init__(self, budget: Budget, trial_id: str):
        super().__init__()
        self.budget, self.trial_id = budget, trial_id
        self._began = time.monotonic()
        self._epochs = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.budget.over():
            self.model.stop_training = True
            self.budget.stopped_trial = self.trial_id

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs += 1
        if self._epochs == 1:
            self.budget.first_epochs.append(time.monotonic() - self._began)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.budget.training += time.monotonic() - self._began


class SpaceTuner(kt.engine.base_tuner.BaseTuner):
    """Runs a space's trials on one dataset; `search.engine.runner` assembles it."""

    def __init__(
        self,
        space: Space,
        data: ImageData,
        info: SearchInfo,
        hooks: HookList,
        strategy: tf.distribute.Strategy,
        oracle: kt.Oracle,
        *,
        verbose: int = 2,
        trials_per_process: int | None = None,
        budget: Budget | None = None,
    ):
        compat.patch_keras_tuner()
        self.budget = budget
        self.space, self.data, self.info, self.hooks = space, data, info, hooks
        self.folder = SpaceDir(info.space_dir)
        self.trials_per_process = trials_per_process
        self._trials_here = 0
        self.strategy = strategy
        self.verbose = verbose
        self._results: dict[str, TrialResult] = {}
        self._memory = TrialMemory()
        self.last_error: str | None = None
        self.failures: list[str] = []  # this process's failed trials' errors
        self._current: TrialInfo | None = None
        self.feature_cache = FeatureCache(self.folder.features, limit_bytes=int(space.search.feature_cache_gb * 2**30)) \
            if space.search.feature_cache else None
        if hasattr(oracle, "on_recovered"):  # Optuna: trials of dead workers told from their records
            oracle.on_recovered = self._publish_recorded
        if hasattr(oracle, "on_lost"):  # Optuna: trials whose worker another worker found dead
            oracle.on_lost = lambda trial_id: self.hooks.on_trial_lost(self.info, trial_id)
        super().__init__(
            oracle=oracle,
            hypermodel=_SpaceHyperModel(space),
            directory=str(info.space_dir),
            project_name=getattr(oracle, "tuner_project", "tuner"),  # Optuna: one per worker process
            overwrite=False,
        )

    # Where things are ------------------------------------------------------------------
    def trial_dir(self, trial_id: str) -> Path:
        return self.folder.trial(trial_id).path

    def trial_number(self, trial: kt.engine.trial.Trial) -> int:
        if hasattr(self.oracle, "trial_number"):  # shared Optuna study: numbered across workers
            return self.oracle.trial_number(trial.trial_id)
        return sorted(self.oracle.trials).index(trial.trial_id) + 1

    def finished_count(self) -> int:
        if hasattr(self.oracle, "finished_count"):
            return self.oracle.finished_count()
        done = (kt.engine.trial.TrialStatus.COMPLETED, kt.engine.trial.TrialStatus.FAILED)
        return sum(1 for t in self.oracle.trials.values() if t.status in done)

    # Resume ----------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Tell the oracle the recorded end of each trial it would run again: a process
        killed after writing a trial's record (step 2) and before telling the oracle
        (step 3). Returns the ids told."""
        told: list[str] = []
        if hasattr(self.oracle, "trial_number"):
            return told  # Optuna: the study reconciles (OptunaOracle.reap)
        for trial_id in compat.requeued_trials(self.oracle):
            record = records.read_record(self.folder.trial(trial_id))
            if record is None or record["status"] not in (COMPLETED, PRUNED, FAILED):
                continue  # never recorded, or KILLED: it runs again
            trial = self.oracle.trials[trial_id]
            compat.drop_requeued(self.oracle, trial_id)
            if record["status"] in (COMPLETED, PRUNED) and record["best"].get(self.oracle.objective.name) is not None:
                self.oracle.update_trial(trial_id, {k: v for k, v in record["best"].items() if v is not None})
                trial.status = kt.engine.trial.TrialStatus.COMPLETED
            else:
                trial.status = kt.engine.trial.TrialStatus.FAILED
                trial.message = record.get("error")
            self.oracle.ongoing_trials = {k: v for k, v in self.oracle.ongoing_trials.items() if v.trial_id != trial_id}
            try:
                self.oracle.end_trial(trial)
            except RuntimeError:
                pass  # "consecutive failures": counted again when the next trial ends
            told.append(trial_id)
            self._publish_recorded(record)
        if told:
            self.save()
        return told

    def _publish_recorded(self, record: dict[str, Any]) -> None:
        """Report a trial that an earlier process recorded but did not report (steps 4)."""
        values = dict(record.get("values") or {})
        info = TrialInfo(
            trial_id=record["trial_id"], number=int(record.get("number") or 0), total=self.space.search.max_trials,
            values=values, config=self.space.trial_config(values), dir=self.trial_dir(record["trial_id"]),
            epochs=len(next(iter((record.get("history") or {}).values()), [])) or self.space.search.epochs,
            own_model=self.space.build_fn is not None,
        )
        self._publish(info, records.result_of(record))

    # Keras Tuner's hooks -----------------------------------------------------------------
    def on_search_begin(self) -> None:
        self.hooks.on_search_begin(self.info)
        told = self.reconcile()
        if told:
            print(f"Resuming: trial(s) {', '.join(told)} had ended before the process stopped; their records "
                  "are kept, not run again.", flush=True)

    def pre_create_trial(self) -> None:
        if self.budget is not None:
            self.budget.check_room_for_a_trial()  # before the oracle hands a trial out

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        self._memory.begin()
        self._current = self._trial_info(trial)
        self.hooks.on_trial_begin(self.info, self._current)
        faults.point("trial-begin")

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        info = self._current
        assert info is not None
        result = self._results.pop(trial.trial_id, None)
        if result is None:  # failed before run_trial could record anything
            result = TrialResult(status=FAILED, history={}, epochs_run=0, seconds=0.0,
                                 error=(trial.message or "failed").strip().splitlines()[-1][:500])
        if result.status == FAILED:
            self.last_error = result.error
            self.failures.append(result.error or "?")
        if hasattr(self.oracle, "record_result"):  # Optuna: its told values, and latency_ms it measured
            self.oracle.record_result(trial.trial_id, result)
        records.write_record(info, result)
        faults.point("after-record")
        # end_trial raises when too many trials failed in a row; this trial is still
        # written and reported before that stops the search.
        stop: RuntimeError | None = None
        try:
            super().on_trial_end(trial)
        except RuntimeError as e:
            stop = e
        faults.point("after-tell")
        self._publish(info, result)
        self._memory.release()  # after the hooks: their references to the trial's objects are gone by then
        if stop is not None:
            raise stop
        if self.budget is not None and self.budget.over():
            raise BudgetSpent()
        self._trials_here += 1
        if self.trials_per_process and self._trials_here >= self.trials_per_process:
            raise Recycle()

    def _publish(self, info: TrialInfo, result: TrialResult) -> None:
        """Steps 4: best.keras and trials.csv (rebuilt from the records), then the hooks."""
        with FolderLock(self.folder.table_lock, doing="updating best.keras and trials.csv", wait=120):
            if result.status == COMPLETED:
                self._keep_best_model(info, result)
            table = records.trials_table(records.load_records(self.folder))
            atomic.write_with(self.folder.trials_csv, lambda tmp: table.to_csv(tmp, index=False))
        self.hooks.on_trial_end(self.info, info, result)

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
            finished=self.finished_count(),
            own_model=self.space.build_fn is not None,
        )

    # One trial ---------------------------------------------------------------------------
    def run_trial(self, trial: kt.engine.trial.Trial, *args: Any, **kwargs: Any) -> dict[str, float]:
        info = self._current
        assert info is not None
        info.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        history: dict[str, list[float]] = {}
        try:
            interrupts.check()
            result = self._train(trial, info, history)
        except KeyboardInterrupt:
            self._interrupted(info, history, started)
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes a FAILED trial
            if interrupts.received():  # the signal, turned into another error inside a library
                self._interrupted(info, history, started)
                raise KeyboardInterrupt("interrupted") from e
            message = failure_message(e)
            atomic.write_text(TrialDir(info.dir).error, traceback.format_exc())
            self._results[trial.trial_id] = TrialResult(
                status=FAILED, history=history, epochs_run=len(history.get("loss", [])),
                seconds=time.monotonic() - started, error=message,
            )
            raise kt.errors.FailedTrialError(message) from None  # its traceback is in error.txt
        if getattr(self.oracle, "trial_status", lambda trial_id: None)(trial.trial_id) == PRUNED:
            result.status = PRUNED  # stopped by the pruner; its model and metrics are kept like any other
        if self.budget is not None and self.budget.stopped_trial == trial.trial_id:
            result.note = f"stopped at the time budget after {result.epochs_run} of {info.epochs - info.initial_epoch} epochs"
        self._results[trial.trial_id] = result
        return result.best  # the best epoch's metrics: what the oracle scores the trial by

    def _interrupted(self, info: TrialInfo, history: dict[str, list[float]], started: float) -> None:
        killed = TrialResult(status=KILLED, history=history, epochs_run=len(history.get("loss", [])),
                             seconds=time.monotonic() - started, error="interrupted")
        records.write_record(info, killed)  # run again on resume (the oracle still has it running)
        self._publish(info, killed)

    def _train(self, trial: kt.engine.trial.Trial, info: TrialInfo, history: dict[str, list[float]]) -> TrialResult:
        search = self.space.search
        resume_from = trial.hyperparameters.values.get("tuner/trial_id")
        trained = training.train(
            info.config, self.data, self.strategy,
            epochs=info.epochs, initial_epoch=info.initial_epoch, steps_per_epoch=search.steps_per_epoch,
            seed=self.info.seed * 1000 + info.number, shuffle_seed=self.info.seed + info.number,
            objective=search.objective, patience=search.early_stopping, history=history,
            # Hyperband: continue the weights of the trial this one extends.
            start_from=TrialDir(self.trial_dir(resume_from)).model if resume_from else None,
            callbacks=[
                _EpochHook(self.hooks, self.info, info),
                *getattr(self.oracle, "keras_callbacks", lambda trial_id: [])(trial.trial_id),
                *(self.space.callbacks_fn(trial.hyperparameters) or [] if self.space.callbacks_fn else []),
                *([_Deadline(self.budget, trial.trial_id)] if self.budget else []),
            ],
            build_model=user_builder(self.space, trial.hyperparameters),
            verbose=self.verbose,
            feature_cache=self.feature_cache, cached_views=search.cached_views,
        )
        if trained.probabilities is None:
            raise training.TrialError(f"no epoch ran (epochs {info.initial_epoch} to {info.epochs})")
        folder = TrialDir(info.dir)
        build.save_for_serving(trained.model, folder.model)
        atomic.save_npy(folder.val_probabilities, trained.probabilities.astype(np.float32))
        self._save_val_labels()
        faults.point("model-saved")
        return TrialResult(
            status=COMPLETED,
            history=trained.history,
            epochs_run=len(trained.history.get("loss", [])),
            seconds=trained.seconds,
            best=training.best_metrics(trained.history, search.objective),
            params=build.count_params(trained.model),
            size_mb=build.model_size_mb(folder.model),
            model_path=folder.model,
            val_probabilities_path=folder.val_probabilities,
            train_images=trained.train_images,
        )

    def _save_val_labels(self) -> None:
        """val_labels.npy, (re)written unless it already holds exactly this data's labels."""
        labels = self.data.labels("val")
        path = self.folder.val_labels
        try:
            if np.array_equal(np.load(path), labels):
                return
        except (OSError, ValueError, EOFError):
            pass  # missing or torn: write it
        atomic.save_npy(path, labels)

    def _keep_best_model(self, info: TrialInfo, result: TrialResult) -> None:
        objective = self.space.search.objective
        score = result.best.get(objective)
        best = _read_best(self.folder.best_record)
        better = best is None or (score is not None and metrics.better(score, best.get("score"), objective))
        if better and result.model_path is not None and result.model_path.exists():
            atomic.copy_file(result.model_path, self.folder.best_model)
            atomic.write_json(self.folder.best_record, {"trial_id": info.trial_id, "score": score,
                                                         "objective": objective})
            if self.space.search.keep_models == "best" and best:
                self.folder.trial(best["trial_id"]).model.unlink(missing_ok=True)
        elif self.space.search.keep_models == "best" and result.model_path is not None:
            result.model_path.unlink(missing_ok=True)


def user_builder(space: Space, hp: kt.HyperParameters) -> training.ModelBuilder | None:
    """The space's own build_model as the trial function builds models, or None (backbone + head)."""
    if space.build_fn is None:
        return None
    build_fn = space.build_fn
    return lambda config, num_classes: build.build_user_model(build_fn, hp, config.image_size, num_classes)


def _read_best(path: Path) -> dict[str, Any] | None:
    import json

    try:
        best = json.loads(path.read_text())
        return best if isinstance(best, dict) and "trial_id" in best else None
    except (OSError, ValueError):
        return None  # none yet, or damaged: the next finished trial rewrites it


def failure_message(error: BaseException) -> str:
    """One line saying why a trial failed."""
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return "out of memory; try a smaller batch_size or image_size"
    if isinstance(error, (SearchError, training.TrialError, kt.errors.FailedTrialError)):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:500]
