"""MLflow tracking of a search: one parent run per search, one nested run per trial.

Configured by `mlflow.yaml` (the working directory's, else the repository's; defaults when
there is none); `MLFLOW_TRACKING_URI` overrides its `tracking_uri`. Tracking only observes,
and the trial records (runs/<space>/trials/<id>/result.json) are the truth it projects: a
store that cannot be reached, or an MLflow call that keeps failing after its retries, prints
"tracking lost" once and the search goes on. At each trial's end and at the search's end
the store is tried again; once it answers, every trial whose record exists but whose run is
missing or unfinished is sent (found by its `trial_id` tag, never twice), runs the outage
left RUNNING are ended with their record's status, and one line says how many were sent.
At the search's end the store is waited for a while (`reconnect_seconds`); what is still
unsent then is sent by the next start of the search.

Statuses: a trial COMPLETED ends FINISHED, FAILED ends FAILED (the error in the `error`
tag), KILLED ends KILLED; PRUNED (stopped early by the algorithm, on purpose) ends FINISHED.
Every trial run also carries the search's own word in its `status` tag. Runs left RUNNING by
a process that died (SIGKILL, a lost machine), its search run, its trial's and the run of
its promotion (registry.py), are marked KILLED by another search of the experiment: by a
worker of the same study as soon as the study finds the dead worker's trial; otherwise when
a search starts or ends, at once when it can tell the process is gone (the same machine),
else once the run's `heartbeat` tag is older than `stale_after_minutes`.

Each trial run also gets the trial's model, val probabilities and record as artifacts
(`trial/`), with the digest of the val labels as a tag, so that the report and the ensemble
of a study shared by several machines can use every trial (`search.tracking.study`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from search.core.algorithms import uses_optuna
from search.models.applicable import applicable
from search.core.hooks import SearchHooks, SearchInfo, TrialInfo, TrialResult
from search.core.status import COMPLETED, KILLED, PRUNED, TrialStatus
from search.models.schedules import learning_rate_schedule
from search.redaction import redact
from search.results import plots
from search.liveness import stale_runs, workers
from search.runs import atomic, faults
from search.runs.layout import SpaceDir, TrialDir
from search.tracking import client as clients
from search.tracking.config import TrackingConfig, load_config, search_tags, tracking_uri
from search.tracking.healing import FILES_SENT, OPEN as _OPEN, Healing

TAG_LIMIT = 5000
HEARTBEAT_SECONDS = 60.0
# Where a lost store is tried again.
_HEALING = ("on_trial_begin", "on_trial_end", "on_search_end")


def hooks_for(space: Any) -> list[SearchHooks]:
    """The tracking hooks for one search (none when mlflow.yaml says `enabled: false`)."""
    config = load_config()
    return [MlflowTracker(config)] if config.enabled else []


def objective_first(metrics: dict[str, Any], search: SearchInfo, prefix: str = "") -> list[tuple[str, Any]]:
    """The metrics with the search's objective first: the MLflow UI keeps the order a run's
    metrics were first logged in, and its compare page's parallel-coordinates plot shows the
    first one shared by the runs compared (it was the training accuracy)."""
    objective = prefix + str(search.settings.get("objective", "val_accuracy"))
    return sorted(metrics.items(), key=lambda item: item[0] != objective)


def labels_digest(path: Path) -> str | None:
    """A digest of val_labels.npy's labels: trials of one study agree on it, or cannot be averaged."""
    try:
        labels = np.load(path)
    except (OSError, ValueError, EOFError):
        return None
    return hashlib.sha256(np.ascontiguousarray(labels.astype(np.int64)).tobytes()).hexdigest()[:16]


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Skip when tracking is off, or lost (except where the store is tried again: `_HEALING`);
    time the call; turn any error into "tracking lost"."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any) -> None:
        if not self.enabled or (self.lost and method.__name__ not in _HEALING):
            return
        started = time.perf_counter()
        try:
            # At the search's end the store is waited for, unless the user is stopping it (KILLED).
            wait = method.__name__ == "on_search_end" and args[1] != KILLED
            if self.lost and not self._heal(args[0], wait=wait):
                return
            method(self, *args)
        except Exception as e:  # noqa: BLE001 - tracking must never fail a search
            self._lose(self._why(e))
        finally:
            self.seconds[method.__name__] = self.seconds.get(method.__name__, 0.0) + time.perf_counter() - started

    return wrapper


class MlflowTracker(Healing, SearchHooks):
    """Logs a search and its trials to MLflow through `MlflowClient` and explicit run ids."""

    def __init__(self, config: TrackingConfig | None = None):
        self.config = config or TrackingConfig()
        self.enabled = True
        self.seconds: dict[str, float] = {}  # time spent in each hook method
        self.uri = ""
        self.parent_id = ""
        self.experiment_id = ""
        self.client: Any = None
        self._space_dir = Path(".")
        self._runs: dict[str, str] = {}  # trial_id -> open run id
        self._ended: set[str] = set()  # trial ids with an ended run under this search's run
        self._pending: dict[str, list[Any]] = {}  # run id -> metrics not flushed yet
        self._flushed = time.monotonic()
        # Trial plots and artifacts are logged here while the next trial trains: drawing and
        # uploading them would otherwise delay every trial's start.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-artifacts")
        self._in_flight: list[Future] = []
        self._beating = threading.Event()
        self._beater: threading.Thread | None = None
        self.worker = workers.this_worker()
        self.lost = False  # the store stopped answering; tried again at each trial's end
        self._lost_lock = threading.Lock()

    # Search ------------------------------------------------------------------------------
    @_guarded
    def on_search_begin(self, search: SearchInfo) -> None:
        self._space_dir = search.space_dir
        self.uri = tracking_uri(self.config, search.space_dir.parent, search.name)
        self._begin(search)

    def _begin(self, search: SearchInfo) -> None:
        self.client = clients.connect(self.uri)
        import mlflow

        mlflow.set_tracking_uri(self.uri)  # Model.log reads the global URI
        name = self.config.experiment.format(space=search.name)
        self.experiment_id = clients.experiment_id(self.client, name, self.uri, self.config.artifact_location)
        self._kill_stale()
        self.parent_id = self._parent(search)
        _OPEN.add(self.parent_id)
        faults.point("search-run")
        self.client.log_batch(self.parent_id, tags=self._tags({**search_tags(search), **stale_runs.tags(self.worker)}))
        self._send_unsent(search)
        self.client.log_artifact(self.parent_id, str(search.space_path), "space")
        atomic.write_json(SpaceDir(search.space_dir).mlflow_record, {
            "tracking_uri": redact(self.uri), "experiment_id": self.experiment_id, "run_id": self.parent_id})
        print(f"MLflow: run {self.parent_id} in experiment {name!r} at {redact(self.uri)}; "
              f"{clients.runs_page(self.uri, self.experiment_id)}", flush=True)
        self._beater = threading.Thread(target=self._beat, daemon=True, name="mlflow-heartbeat")
        self._beater.start()

    def _parent(self, search: SearchInfo) -> str:
        """The run of this search: the one in mlflow.json when the store still has it."""
        found = clients.search_run(SpaceDir(search.space_dir))
        if found is not None:
            try:
                run = self.client.get_run(found[1])
            except Exception:  # noqa: BLE001 - not in this store (deleted, or another store)
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.client.update_run(found[1], status="RUNNING")
                return found[1]
        # Tagged with this process as it is created: killed at once, it is still found dead.
        # Named so that two searches of one space tell apart in the runs list: algorithm and runs folder.
        name = f"{search.name} search ({search.settings.get('algorithm', '?')}, {Path(search.space_dir).parent})"
        return self.client.create_run(self.experiment_id, run_name=name[:250],
                                      tags=stale_runs.tags(self.worker)).info.run_id

    def _kill(self, run_id: str) -> None:
        self.client.set_tag(run_id, "status", KILLED)
        self.client.set_terminated(run_id, "KILLED")

    def _kill_stale(self) -> None:
        """Runs still RUNNING (searches' and trials') whose process died will never end: mark them KILLED."""
        running = self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
        for run in running:
            if stale_runs.is_stale(run.data.tags, run.info.start_time, me=self.worker,
                                   open_here=run.info.run_id in _OPEN,
                                   stale_after=60 * self.config.stale_after_minutes):
                self._kill(run.info.run_id)

    @_guarded
    def on_trial_lost(self, search: SearchInfo, trial_id: str) -> None:
        """The study found the worker of `trial_id` dead: its trial run and its search run end KILLED."""
        study = _study(search)
        if not study:
            return
        running = self.client.search_runs(
            [self.experiment_id], max_results=100,
            filter_string=f"attributes.status = 'RUNNING' and tags.trial_id = '{trial_id}'")
        for run in running:
            if run.data.tags.get("study") != study or run.info.run_id in _OPEN:
                continue
            self._kill(run.info.run_id)
            parent = run.data.tags.get("mlflow.parentRunId")
            if not parent or parent in _OPEN:
                continue
            search_run = self.client.get_run(parent)
            # The dead worker's search, unless a new process of that machine has taken it up since.
            if search_run.info.status == "RUNNING" and search_run.data.tags.get("worker") == run.data.tags.get("worker"):
                self._kill(parent)

    def _beat(self) -> None:
        while not self._beating.wait(HEARTBEAT_SECONDS):
            if self.lost:
                continue
            for run_id in [self.parent_id, *self._runs.values()]:
                try:
                    self.client.set_tag(run_id, "heartbeat", f"{time.time():.0f}")
                except Exception:  # noqa: BLE001 - ended meanwhile, or a hiccup: the next beat
                    pass

    @_guarded
    def on_search_end(self, search: SearchInfo, status: str) -> None:
        self._beating.set()
        self._wait_for_background()
        self._send_unsent(search)  # runs of ended trials an error left open in this process
        for trial_id, run_id in list(self._runs.items()):  # trials that never reached their end
            self._flush(run_id)
            self._kill(run_id)
            del self._runs[trial_id]
            _OPEN.discard(run_id)
        self._kill_stale()  # what workers that died meanwhile left open (on this machine, at once)
        if status != KILLED and self.config.log_models != "none":
            self._log_best_model(search)
        folder = SpaceDir(search.space_dir)
        for path in (folder.trials_csv, folder.skipped):
            if path.exists():
                self.client.log_artifact(self.parent_id, str(path))
        self.client.set_tag(self.parent_id, "status", status)
        self.client.set_terminated(self.parent_id, TrialStatus(status).mlflow)
        _OPEN.discard(self.parent_id)

    # Trials ------------------------------------------------------------------------------
    @_guarded
    def on_trial_begin(self, search: SearchInfo, trial: TrialInfo) -> None:
        self._begin_trial(search, trial)

    def _begin_trial(self, search: SearchInfo, trial: TrialInfo) -> None:
        from mlflow.entities import Param

        tags = {
            "mlflow.parentRunId": self.parent_id, "trial_id": trial.trial_id, "trial_number": str(trial.number),
            "status": "RUNNING", "backbone": trial.model, **stale_runs.tags(self.worker), "space": search.name,
        }
        study = _study(search)
        if study:
            tags["study"] = str(study)
        run = self.client.create_run(self.experiment_id, run_name=_run_name(search, trial), tags=tags)
        values = {**applicable(trial.config.as_dict(), trial.model, trial.values), "epochs": trial.epochs}
        if trial.initial_epoch:
            values["initial_epoch"] = trial.initial_epoch
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in values.items()])
        self._runs[trial.trial_id] = run.info.run_id
        _OPEN.add(run.info.run_id)

    @_guarded
    def on_epoch_end(self, search: SearchInfo, trial: TrialInfo, epoch: int, logs: dict[str, float]) -> None:
        from mlflow.entities import Metric

        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        # Step = the epoch as Keras prints it (1-based), the same in the learning-curves plot.
        self._pending.setdefault(run_id, []).extend(
            Metric(k, float(v), now, epoch + 1) for k, v in objective_first(logs, search)
            if isinstance(v, (int, float, np.number)))
        if time.monotonic() - self._flushed >= self.config.flush_seconds:
            self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        metrics = self._pending.pop(run_id, [])
        for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        self._flushed = time.monotonic()

    @_guarded
    def on_trial_end(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> None:
        self._end_trial(search, trial, result)

    def _end_trial(self, search: SearchInfo, trial: TrialInfo, result: TrialResult, *, background: bool = True) -> None:
        from mlflow.entities import Metric

        if trial.trial_id in self._ended and trial.trial_id not in self._runs:
            return  # logged already (by this start, or an earlier one)
        # Forgotten only once ended: a Ctrl-C landing in here leaves it to on_search_end.
        if trial.trial_id not in self._runs:  # ended in a process that died before reporting it
            self._begin_trial(search, trial)
            self.client.set_tag(self._runs[trial.trial_id], "recovered", "true")
        run_id = self._runs[trial.trial_id]
        self._flush(run_id)
        now = int(time.time() * 1000)
        summary: dict[str, float | int | None] = {f"best_{k}": v for k, v in result.best.items()}
        summary.update(params=result.params, size_mb=result.size_mb, seconds_per_epoch=result.seconds_per_epoch,
                       images_per_second=result.images_per_second, epochs_run=result.epochs_run,
                       train_seconds=result.seconds)
        tags = {"status": TrialStatus(result.status).csv, FILES_SENT: "false"}
        if result.error:
            tags["error"] = result.error
        if result.note:  # e.g. "probe only: ..." or "fine-tuned: ..." (Search(fine_tune_best))
            tags["note"] = result.note
        digest = labels_digest(SpaceDir(search.space_dir).val_labels)
        if digest and result.status in (COMPLETED, PRUNED):
            tags["val_labels_digest"] = digest
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in objective_first(summary, search, "best_")
                             if v is not None],
            tags=self._tags(tags))
        if background:
            self._in_flight.append(self._background.submit(self._log_trial_files, run_id, search, trial, result))
        else:
            self._log_trial_files(run_id, search, trial, result, background=False)
        if self.config.log_models == "all" and result.model_path and result.model_path.exists():
            clients.log_keras_model(run_id, result.model_path)
        self.client.set_terminated(run_id, TrialStatus(result.status).mlflow)
        del self._runs[trial.trial_id]
        _OPEN.discard(run_id)
        if result.status != KILLED:
            self._ended.add(trial.trial_id)
        self._log_best_so_far(search, trial)

    def _log_trial_files(self, run_id: str, search: SearchInfo, trial: TrialInfo, result: TrialResult,
                         background: bool = True) -> None:
        """Plots and trial/ files of a trial's run; tagged once all were sent. In the background
        an error is "tracking lost" (the files are sent again once the store answers)."""
        if self.lost and background:  # the store went away since this was queued
            return
        try:
            for artifact in self._trial_plots(search, trial, result):
                self.client.log_artifact(run_id, str(artifact), "plots")
            folder = TrialDir(trial.dir)
            if self.config.log_trial_artifacts and result.status in (COMPLETED, PRUNED):
                for path in (folder.record, folder.val_probabilities, folder.model,
                             SpaceDir(search.space_dir).val_labels):
                    if path.exists():
                        self.client.log_artifact(run_id, str(path), "trial")
            self.client.set_tag(run_id, FILES_SENT, "true")
        except Exception as e:  # noqa: BLE001 - sorted below
            if not background:
                raise
            self._lose(self._why(e))

    def _wait_for_background(self) -> None:
        """Let the background logging finish; one that failed is a warning, never an error."""
        in_flight, self._in_flight = self._in_flight, []
        for future in in_flight:
            error = future.exception()
            if error is not None:
                print(f"warning: MLflow: a trial's plots or files were not logged ({type(error).__name__}: "
                      f"{redact(str(error).strip())[:200]}).", file=sys.stderr, flush=True)

    @_guarded
    def on_search_pause(self, search: SearchInfo) -> None:
        self._wait_for_background()

    def _trial_plots(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> list[Path]:
        """Learning curves, the LR schedule and the confusion matrix, drawn into the trial's folder."""
        drawn: list[Path] = []
        out = TrialDir(trial.dir).plots
        title = f"trial {trial.number} ({trial.model})"
        if result.history.get("loss"):
            drawn.append(plots.learning_curves(result.history, out / "learning_curves.png",
                                               first_epoch=trial.initial_epoch, title=title))
        schedule = learning_rate_schedule(trial.config, trial.epochs, search.replicas)
        drawn.append(plots.schedule(schedule, trial.epochs, out / "lr_schedule.png", title=f"{title} LR"))
        labels_path = SpaceDir(search.space_dir).val_labels
        if result.val_probabilities_path and result.val_probabilities_path.exists() and labels_path.exists():
            predictions = np.load(result.val_probabilities_path).argmax(axis=1)
            classes = search.data.get("classes") or [str(i) for i in range(int(predictions.max()) + 1)]
            drawn.append(plots.confusion_matrix(np.load(labels_path), predictions, classes,
                                                out / "confusion_matrix.png", title=title))
        return drawn

    def _log_best_so_far(self, search: SearchInfo, trial: TrialInfo) -> None:
        # The search's row in the runs list compares searches: its trial count beside its best score,
        # logged first so that the compare page plots it (see objective_first).
        try:
            best = json.loads(SpaceDir(search.space_dir).best_record.read_text())
        except (OSError, ValueError):
            best = None
        if best is not None:
            self.client.log_metric(self.parent_id, f"best_{best['objective']}", float(best["score"]), step=trial.number)
            self.client.set_tag(self.parent_id, "best_trial_id", best["trial_id"])
        self.client.log_metric(self.parent_id, "trials_finished", float(len(self._ended)), step=trial.number)

    # Models ------------------------------------------------------------------------------
    def _log_best_model(self, search: SearchInfo) -> None:
        folder = SpaceDir(search.space_dir)
        try:
            trial_id = json.loads(folder.best_record.read_text())["trial_id"]
        except (OSError, ValueError, KeyError):
            return
        if not folder.best_model.exists():
            return
        if self.client.get_run(self.parent_id).data.tags.get("best_model_trial_id") == trial_id:
            return  # logged by an earlier start of this search
        runs = self.client.search_runs(
            [self.experiment_id], order_by=["attributes.start_time DESC"], max_results=1,
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}' and tags.trial_id = '{trial_id}'")
        if runs:
            # Registered only when promoted (search.ensemble): the registry holds what is served.
            clients.log_keras_model(runs[0].info.run_id, folder.best_model)
            self.client.set_tag(self.parent_id, "best_model_trial_id", trial_id)

    def _tags(self, tags: dict[str, Any]) -> list[Any]:
        from mlflow.entities import RunTag

        return [RunTag(k, str(v)[:TAG_LIMIT]) for k, v in tags.items()]


def _study(search: SearchInfo) -> str | None:
    """The Optuna study a search's trials belong to (None for Keras Tuner's algorithms)."""
    study = search.settings.get("options", {}).get("study") or (
        search.name if uses_optuna(str(search.settings.get("algorithm"))) else None)
    return str(study) if study else None


def _run_name(search: SearchInfo, trial: TrialInfo) -> str:
    """A trial run's name in the MLflow UI: its number, model and the values it tried (those not
    fixed with --set), e.g. "trial 003 MobileNetV2 learning_rate=0.001 dropout=0.2"."""
    values = " ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in trial.values.items()
                      if k not in search.overrides and not k.startswith("tuner/"))
    return f"trial {trial.number:03d} {trial.model} {values}".strip()[:250]
