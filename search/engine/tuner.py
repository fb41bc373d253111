"""The search loop, and the order in which a trial's end is written.

A `TrialSource` (Keras Tuner's oracles, or an Optuna study: `search.engine.source`) keeps
which values to try and what finished; this loop asks it for each trial, trains it through
`search.engine.trial`, saves it, reports it to the hooks, and turns every way a trial can go
wrong into a FAILED trial instead of a dead search. Keras Tuner supplies the space's
`HyperParameters` and keeps its oracle's state; its own `search` loop is not used.

A trial's end is written in this order, so that a process killed between any two steps
neither loses the trial nor runs it twice:

1. its model and val probabilities (atomic writes);
2. its record, `trials/<id>/result.json`: from here on the trial is done;
3. the source is told (Keras Tuner's state files, or the Optuna study);
4. trials.csv, best.keras and the hooks (MLflow).

On resume, a trial the source would run again but whose record says it ended is told its
recorded result instead of being run again (`reconcile`); steps 4 are redone from the records
whenever they run.
"""

from __future__ import annotations

import functools
import time
import traceback
from pathlib import Path
from typing import Any

import keras_tuner as kt
import numpy as np
import tensorflow as tf

from search import compat, metrics
from search.data.dataset import TRAIN_VAL, ImageData
from search.engine import interrupts, trial as training
from search.engine.halving import Decision, Rung
from search.engine.budget import Budget, BudgetSpent
from search.engine.callbacks import Deadline, EpochHook, Interruptible, Report
from search.core.hooks import HookList, SearchInfo, TrialInfo, TrialResult
from search.core.status import COMPLETED, ENDED, FAILED, KILLED, PRUNED
from search.engine.memory import TrialMemory
from search.engine.source import Asked, TooManyFailures, TrialSource
from search.errors import SearchError
from search.models import build
from search.redaction import redact
from search.models.features import FeatureCache
from search.results import records
from search.runs import atomic, diskfull, faults
from search.runs.layout import SpaceDir, TrialDir
from search.runs.locks import FolderLock
from search.space import Space

# Every trial is a new model with new functions: TensorFlow calls that "retracing" and warns.
tf.get_logger().setLevel("ERROR")


class Recycle(Exception):
    """This process ran its `trials_per_process`: the search goes on in a fresh one."""


class DamagedState(Exception):
    """Keras Tuner's state files (tuner/) could not be read back; the cause is the reader's error."""


class _SpaceHyperModel(kt.HyperModel):
    """Declares the space's hyperparameters; models are built in `SpaceTuner._train`.

    Keras Tuner calls `build` when the tuner is created, only to discover the space, so
    it must stay cheap: building a DenseNet201 here would cost seconds and a download.
    """

    def __init__(self, space: Space):
        super().__init__(name=space.name)
        self.space = space

    def build(self, hp: kt.HyperParameters) -> None:
        self.space.declare(hp)


class SpaceTuner(kt.engine.base_tuner.BaseTuner):
    """Runs a space's trials on one dataset; `search.engine.runner` assembles it.

    Keras Tuner's BaseTuner keeps the source's oracle state in the runs folder (and declares
    the space to it); `run` is the loop."""

    def __init__(
        self,
        space: Space,
        data: ImageData,
        info: SearchInfo,
        hooks: HookList,
        strategy: tf.distribute.Strategy,
        source: TrialSource,
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
        self.source = source
        self._memory = TrialMemory()
        self._pruned: set[str] = set()
        # Search(fine_tune_best): the rung that decides which probed trials are fine-tuned.
        self._rung = Rung(self.folder, space.search) if space.search.fine_tune_best is not None else None
        self._decisions: dict[str, Decision] = {}
        self.last_error: str | None = None
        self.failures: list[str] = []  # this process's failed trials' errors
        source.open(info.space_dir)
        source.connect(self._publish_recorded, lambda trial_id: self.hooks.on_trial_lost(self.info, trial_id))
        self._current: TrialInfo | None = None
        self.feature_cache = FeatureCache(self.folder.features, limit_bytes=int(space.search.feature_cache_gb * 2**30)) \
            if space.search.feature_cache else None
        super().__init__(
            oracle=source.oracle,
            hypermodel=_SpaceHyperModel(space),
            directory=str(info.space_dir),
            project_name=source.project,
            overwrite=False,
        )
        self.oracle.verbose = 0  # ConsoleProgress replaces Keras Tuner's display

    def reload(self) -> None:
        """Keras Tuner's state read back; whatever reading it raises (a torn JSON file, a
        KeyError of its own, keras-tuner#1055) is DamagedState, told apart from a user's mistake."""
        try:
            super().reload()
        except Exception as e:  # noqa: BLE001 - every way its files can fail to read
            raise DamagedState(f"{type(e).__name__}: {e}") from e

    # Where things are ------------------------------------------------------------------
    def trial_dir(self, trial_id: str) -> Path:
        return self.folder.trial(trial_id).path

    # Resume ----------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Tell the source the recorded end of each trial it would run again: a process
        killed after writing a trial's record (step 2) and before telling the source
        (step 3). Returns the ids told."""
        told: list[str] = []
        for trial_id in self.source.pending():
            record = records.read_record(self.folder.trial(trial_id))
            if record is None or record["status"] not in ENDED:
                continue  # never recorded, or KILLED: it runs again
            try:
                self.source.tell_recorded(trial_id, record)
            except TooManyFailures:
                pass  # counted again when the next trial ends
            told.append(trial_id)
            self._publish_recorded(record)
        if told:
            self.save()
        return told

    def restore(self) -> int:
        """Give the source the ended trials recorded in trials/ that it does not know, so none runs again."""
        count = self.source.restore(records.load_records(self.folder))
        if count:
            self.save()
        return count

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

    # The loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Ask, train, record, tell, until the source has no trial left. Ends by raising
        Recycle, BudgetSpent, TooManyFailures or KeyboardInterrupt when the search stops early."""
        self.hooks.on_search_begin(self.info)
        told = self.reconcile()
        if told:
            print(f"Resuming: trial(s) {', '.join(told)} had ended before the process stopped; their records "
                  "are kept, not run again.", flush=True)
        while True:
            if self.budget is not None:
                self.budget.check_room_for_a_trial()  # before the source hands a trial out
            asked = self.source.ask()
            if asked is None:
                return
            self._memory.begin()
            info = self._trial_info(asked)
            self.hooks.on_trial_begin(self.info, info)
            faults.point("trial-begin")
            self._end(asked, info, self._run(asked, info))

    def _end(self, asked: Asked, info: TrialInfo, result: TrialResult) -> None:
        if result.status == FAILED:
            self.last_error = result.error
            self.failures.append(result.error or "?")
        records.write_record(info, result)
        faults.point("after-record")
        # The source stops the search when too many trials failed in a row; this trial is
        # still written and reported before that stops it.
        stop: TooManyFailures | None = None
        try:
            self.source.tell(asked.trial_id, result)
            self.save()
        except TooManyFailures as e:
            stop = e
        faults.point("after-tell")
        self._publish(info, result)
        self._memory.release()  # after the hooks: their references to the trial's objects are gone by then
        self._decisions.pop(asked.trial_id, None)  # a trial that failed after its probe's decision
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
            elif result.status == PRUNED and self.space.search.keep_models == "best" and result.model_path is not None:
                result.model_path.unlink(missing_ok=True)  # never best.keras (completed trials only)
            records.write_trials_csv(self.folder, locked=True)
        self.hooks.on_trial_end(self.info, info, result)

    def _trial_info(self, asked: Asked) -> TrialInfo:
        return TrialInfo(
            trial_id=asked.trial_id,
            number=asked.number,
            total=self.space.search.max_trials,
            values=asked.values,
            config=self.space.trial_config(asked.hyperparameters.values),
            dir=self.trial_dir(asked.trial_id),
            epochs=asked.epochs,
            initial_epoch=asked.initial_epoch,
            finished=self.source.finished(),
            own_model=self.space.build_fn is not None,
        )

    # One trial ---------------------------------------------------------------------------
    def _run(self, asked: Asked, info: TrialInfo) -> TrialResult:
        """The trial trained, or FAILED with the reason; KeyboardInterrupt after recording it KILLED."""
        info.dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        history: dict[str, list[float]] = {}
        try:
            interrupts.check()
            with interrupts.deferred():  # a signal stops the trial at a batch's end, never inside TensorFlow
                result = self._train(asked, info, history)
        except KeyboardInterrupt:
            self._interrupted(info, history, started)
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes a FAILED trial
            if diskfull.is_disk_full(e):  # not the trial's fault: the search stops, the trial runs again on resume
                raise
            if interrupts.received():  # the signal, turned into another error inside a library
                self._interrupted(info, history, started)
                raise KeyboardInterrupt("interrupted") from e
            atomic.write_text(TrialDir(info.dir).error, redact(traceback.format_exc()))
            return TrialResult(status=FAILED, history=history, epochs_run=len(history.get("loss", [])),
                               seconds=time.monotonic() - started, error=redact(failure_message(e)))
        if asked.trial_id in self._pruned:
            result.status = PRUNED  # stopped by the pruner; its model and metrics are kept like any other
        decision = self._decisions.pop(asked.trial_id, None)
        if decision is not None:
            if not decision.fine_tune:
                result.status = PRUNED  # ended at the rung: its probe's model and metrics are its result
            result.note = decision.note
        if self.budget is not None and self.budget.stopped_trial == asked.trial_id:
            stopped = f"stopped at the time budget after {result.epochs_run} of {info.epochs - info.initial_epoch} epochs"
            result.note = f"{result.note}; {stopped}" if result.note else stopped
        return result

    def _interrupted(self, info: TrialInfo, history: dict[str, list[float]], started: float) -> None:
        killed = TrialResult(status=KILLED, history=history, epochs_run=len(history.get("loss", [])),
                             seconds=time.monotonic() - started, error="interrupted")
        records.write_record(info, killed)  # run again on resume (the oracle still has it running)
        self._publish(info, killed)

    def _train(self, asked: Asked, info: TrialInfo, history: dict[str, list[float]]) -> TrialResult:
        search = self.space.search
        resume_from = asked.resume_from
        folder = TrialDir(info.dir)
        if search.folds:  # each fold in turn; the pruner is not asked (search.engine.crossval)
            from search.engine.crossval import train_folds
            train = functools.partial(train_folds, folds=search.folds, fold_seed=search.seed)
        trained = (train if search.folds else training.train)(
            info.config, self.data, self.strategy,
            epochs=info.epochs, initial_epoch=info.initial_epoch, steps_per_epoch=search.steps_per_epoch,
            seed=self.info.seed * 1000 + info.number, shuffle_seed=self.info.seed + info.number,
            objective=search.objective, patience=search.early_stopping, history=history,
            # Hyperband: continue the weights of the trial this one extends.
            start_from=TrialDir(self.trial_dir(resume_from)).model if resume_from else None,
            callbacks=[
                EpochHook(self.hooks, self.info, info),
                Interruptible(),
                *([] if search.folds else [Report(self.source, asked.trial_id, self._pruned)]),
                *(self.space.callbacks_fn(asked.hyperparameters) or [] if self.space.callbacks_fn else []),
                *([Deadline(self.budget, asked.trial_id)] if self.budget else []),
            ],
            build_model=user_builder(self.space, asked.hyperparameters),
            verbose=self.verbose,
            feature_cache=self.feature_cache, cached_views=search.cached_views,
            fine_tune_if=self._rung.gate(asked.trial_id, asked.runs_again, self._decisions) if self._rung else None,
        )
        if trained.probabilities is None:
            raise training.TrialError(f"no epoch ran (epochs {info.initial_epoch} to {info.epochs})")
        build.save_for_serving(trained.model, folder.model)
        atomic.save_npy(folder.val_probabilities, trained.probabilities.astype(np.float32))
        self._save_val_labels(self.data.labels(TRAIN_VAL if search.folds else "val"))
        faults.point("model-saved")
        best = trained.best or training.best_metrics(trained.history, search.objective)
        if search.minimize == "latency_ms":  # the second objective, measured on the kept weights
            from search.results.pareto import latency_ms

            best["latency_ms"] = latency_ms(trained.model)
        return TrialResult(
            status=COMPLETED,
            history=trained.history,
            epochs_run=len(trained.history.get("loss", [])),
            seconds=trained.seconds,
            best=best,
            params=build.count_params(trained.model),
            size_mb=build.model_size_mb(folder.model),
            model_path=folder.model,
            val_probabilities_path=folder.val_probabilities,
            train_images=trained.train_images,
        )

    def _save_val_labels(self, labels: np.ndarray) -> None:
        """val_labels.npy, (re)written unless it already holds exactly these labels (val's, or
        train+val's when the val probabilities are out-of-fold)."""
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
