"""MLflow tracking: one parent run per search, one nested run per trial. The only module
that imports mlflow.

Configured by `mlflow.yaml` (the working directory's, else the repository's; defaults when
there is none); `MLFLOW_TRACKING_URI` overrides its `tracking_uri`. Tracking only observes:
an unreachable store or any MLflow error prints one warning and the search goes on.

Statuses: a trial COMPLETED ends FINISHED, FAILED ends FAILED (the error in the `error`
tag), KILLED ends KILLED; PRUNED (stopped early by the algorithm, on purpose) ends FINISHED.
Every trial run also carries the search's own word in its `status` tag.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from search import plots
from search.hooks import COMPLETED, FAILED, KILLED, PRUNED, SearchHooks, SearchInfo, TrialInfo, TrialResult
from search.results import write_json
from search.tracking_config import TrackingConfig, load_config, search_tags, tracking_uri, unreachable, version

WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _worker_alive(worker: str | None) -> bool:
    """Whether the process that tagged a run `host:pid` may still be running it."""
    host, _, pid = (worker or "").rpartition(":")
    if not host or not pid.isdigit():
        return False
    if host != socket.gethostname():
        return True  # cannot tell from here
    if int(pid) == os.getpid():
        return False  # an earlier search in this process: it is over
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


RUN_STATUS = {COMPLETED: "FINISHED", PRUNED: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}
TAG_LIMIT = 5000


def hooks_for(space: Any) -> list[SearchHooks]:
    """The tracking hooks for one search (none when mlflow.yaml says `enabled: false`)."""
    config = load_config()
    return [MlflowTracker(config)] if config.enabled else []


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Skip when tracking is off; time the call; turn any error into one warning."""

    @functools.wraps(method)
    def wrapper(self: MlflowTracker, *args: Any) -> None:
        if not self.enabled:
            return
        started = time.perf_counter()
        try:
            method(self, *args)
        except Exception as e:  # noqa: BLE001 - tracking must never fail a search
            self._disable(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300])
        finally:
            self.seconds[method.__name__] = self.seconds.get(method.__name__, 0.0) + time.perf_counter() - started

    return wrapper


class MlflowTracker(SearchHooks):
    """Logs a search and its trials to MLflow through `MlflowClient` and explicit run ids."""

    def __init__(self, config: TrackingConfig | None = None):
        self.config = config or TrackingConfig()
        self.enabled = True
        self.seconds: dict[str, float] = {}  # time spent in each hook method
        self.uri = ""
        self.parent_id = ""
        self.experiment_id = ""
        self._space_dir = Path(".")
        self._runs: dict[str, str] = {}  # trial_id -> open run id
        self._pending: dict[str, list[Any]] = {}  # run id -> metrics not flushed yet
        self._flushed = time.monotonic()
        # Trial plots are drawn and logged here while the next trial trains: drawing three
        # figures cost ~1.8 s a trial on the search's critical path.
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-plots")
        self._in_flight: list[Future] = []

    def _disable(self, reason: str) -> None:
        self.enabled = False
        print(f"warning: MLflow tracking is off for the rest of this search ({reason}). The search goes on; "
              f"its results stay in {self._space_dir} (trials.csv).", file=sys.stderr, flush=True)

    # Search ------------------------------------------------------------------------------
    @_guarded
    def on_search_begin(self, search: SearchInfo) -> None:
        self._space_dir = search.space_dir
        self.uri = tracking_uri(self.config, search.space_dir.parent, search.name)
        # An unreachable server must cost seconds, not minutes of retries with backoff.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        why = unreachable(self.uri)
        if why:
            return self._disable(f"cannot reach the tracking server {self.uri}: {why}")
        import mlflow

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)  # Model.log reads the global URI
        self.client = mlflow.MlflowClient(self.uri)
        self.experiment_id = self._experiment(self.config.experiment.format(space=search.name))
        self.parent_id = self._parent(search)
        self.client.log_batch(self.parent_id, tags=self._tags(search_tags(search)))
        self.client.log_artifact(self.parent_id, str(search.space_path), "space")
        write_json(search.space_dir / "mlflow.json", {
            "tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.parent_id})
        print(f"MLflow: run {self.parent_id} in experiment {self.config.experiment.format(space=search.name)!r} "
              f"at {self.uri}", flush=True)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = self.config.artifact_location
        if location is None and self.uri.startswith("sqlite:///"):
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        elif location and "://" not in location:
            location = Path(location).resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _parent(self, search: SearchInfo) -> str:
        """The run of this search: the one in mlflow.json when the store still has it."""
        record = search.space_dir / "mlflow.json"
        previous = json.loads(record.read_text()).get("run_id") if record.exists() else None
        if previous:
            try:
                run = self.client.get_run(previous)
            except Exception:  # noqa: BLE001 - not in this store (deleted, or another store)
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                self.client.update_run(previous, status="RUNNING")
                self._kill_stale(previous)
                return previous
        return self.client.create_run(self.experiment_id, run_name=search.name).info.run_id

    def _kill_stale(self, parent_id: str) -> None:
        """Trial runs still RUNNING whose process died will never end: mark them KILLED.

        Other workers of a shared study may be running trials right now: a run is stale only
        when its worker is a process of this machine that no longer exists (or is untagged).
        A dead worker on another machine is left for its own next start to clean up.
        """
        running = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'")
        for run in running:
            if _worker_alive(run.data.tags.get("worker")):
                continue
            self.client.set_tag(run.info.run_id, "status", KILLED)
            self.client.set_terminated(run.info.run_id, "KILLED")

    @_guarded
    def on_search_end(self, search: SearchInfo, status: str) -> None:
        self._wait_for_plots()
        for trial_id, run_id in list(self._runs.items()):  # trials that never reached their end
            self._flush(run_id)
            self.client.set_tag(run_id, "status", KILLED)
            self.client.set_terminated(run_id, "KILLED")
            del self._runs[trial_id]
        if status != KILLED and self.config.log_models != "none":
            self._log_best_model(search)
        csv = search.space_dir / "trials.csv"
        if csv.exists():
            self.client.log_artifact(self.parent_id, str(csv))
        self.client.set_tag(self.parent_id, "status", status)
        self.client.set_terminated(self.parent_id, RUN_STATUS[status])

    # Trials ------------------------------------------------------------------------------
    @_guarded
    def on_trial_begin(self, search: SearchInfo, trial: TrialInfo) -> None:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial.number:03d}-{trial.trial_id}", tags={
            "mlflow.parentRunId": self.parent_id, "trial_id": trial.trial_id,
            "trial_number": str(trial.number), "status": "RUNNING", "backbone": trial.config.backbone,
            "worker": WORKER})
        values = {**trial.config.as_dict(), **trial.values, "epochs": trial.epochs}
        if trial.initial_epoch:
            values["initial_epoch"] = trial.initial_epoch
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in values.items()])
        self._runs[trial.trial_id] = run.info.run_id

    @_guarded
    def on_epoch_end(self, search: SearchInfo, trial: TrialInfo, epoch: int, logs: dict[str, float]) -> None:
        from mlflow.entities import Metric

        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        # Step = the epoch as Keras prints it (1-based), the same in the learning-curves plot.
        self._pending.setdefault(run_id, []).extend(
            Metric(k, float(v), now, epoch + 1) for k, v in logs.items() if isinstance(v, (int, float, np.number)))
        if time.monotonic() - self._flushed >= self.config.flush_seconds:
            self._flush(run_id)

    def _flush(self, run_id: str) -> None:
        metrics = self._pending.pop(run_id, [])
        for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
        self._flushed = time.monotonic()

    @_guarded
    def on_trial_end(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> None:
        from mlflow.entities import Metric

        # Forgotten only once ended: a Ctrl-C landing in here leaves it to on_search_end.
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        self._flush(run_id)
        now = int(time.time() * 1000)
        summary = {f"best_{k}": v for k, v in result.best.items()}
        summary.update(params=result.params, size_mb=result.size_mb, seconds_per_epoch=result.seconds_per_epoch,
                       images_per_second=result.images_per_second, epochs_run=result.epochs_run,
                       train_seconds=result.seconds)
        tags = {"status": result.status}
        if result.error:
            tags["error"] = result.error
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items() if v is not None],
            tags=self._tags(tags))
        self._in_flight.append(self._background.submit(self._log_trial_plots, run_id, search, trial, result))
        if self.config.log_models == "all" and result.model_path and result.model_path.exists():
            self._log_model(run_id, result.model_path, register=False)
        self.client.set_terminated(run_id, RUN_STATUS.get(result.status, "FINISHED"))
        del self._runs[trial.trial_id]
        self._log_best_so_far(search, trial)

    def _log_trial_plots(self, run_id: str, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> None:
        if not self.enabled:  # the store went away since this was queued
            return
        for artifact in self._trial_plots(search, trial, result):
            self.client.log_artifact(run_id, str(artifact), "plots")

    def _wait_for_plots(self) -> None:
        """Let the background plots finish; one that failed is a warning, never an error."""
        in_flight, self._in_flight = self._in_flight, []
        for future in in_flight:
            error = future.exception()
            if error is not None:
                print(f"warning: MLflow: a trial's plots were not logged ({type(error).__name__}: "
                      f"{str(error).strip()[:200]}).", file=sys.stderr, flush=True)

    @_guarded
    def on_search_pause(self, search: SearchInfo) -> None:
        self._wait_for_plots()

    def _trial_plots(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> list[Path]:
        """Learning curves, the LR schedule and the confusion matrix, drawn into the trial's folder."""
        drawn: list[Path] = []
        out = trial.dir / "plots"
        title = f"trial {trial.number} ({trial.config.backbone})"
        if result.history.get("loss"):
            drawn.append(plots.learning_curves(result.history, out / "learning_curves.png",
                                               first_epoch=trial.initial_epoch, title=title))
        from search import schedules

        schedule = schedules.learning_rate_schedule(trial.config, trial.epochs, search.replicas)
        drawn.append(schedules.plot_schedule(schedule, trial.epochs, out / "lr_schedule.png", title=f"{title} LR"))
        labels_path = search.space_dir / "val_labels.npy"
        if result.val_probabilities_path and result.val_probabilities_path.exists() and labels_path.exists():
            predictions = np.load(result.val_probabilities_path).argmax(axis=1)
            classes = search.data.get("classes") or [str(i) for i in range(int(predictions.max()) + 1)]
            drawn.append(plots.confusion_matrix(np.load(labels_path), predictions, classes,
                                                out / "confusion_matrix.png", title=title))
        return drawn

    def _log_best_so_far(self, search: SearchInfo, trial: TrialInfo) -> None:
        best_file = search.space_dir / "best.json"
        if not best_file.exists():
            return
        best = json.loads(best_file.read_text())
        self.client.log_metric(self.parent_id, f"best_{best['objective']}", float(best["score"]), step=trial.number)
        self.client.set_tag(self.parent_id, "best_trial_id", best["trial_id"])

    # Models ------------------------------------------------------------------------------
    def _log_best_model(self, search: SearchInfo) -> None:
        best_file, model_file = search.space_dir / "best.json", search.space_dir / "best.keras"
        if not best_file.exists() or not model_file.exists():
            return
        trial_id = json.loads(best_file.read_text())["trial_id"]
        if self.client.get_run(self.parent_id).data.tags.get("best_model_trial_id") == trial_id:
            return  # logged by an earlier start of this search
        runs = self.client.search_runs(
            [self.experiment_id], order_by=["attributes.start_time DESC"], max_results=1,
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_id}' and tags.trial_id = '{trial_id}'")
        if runs:
            # Registered only when promoted (search.ensemble): the registry holds what is served.
            self._log_model(runs[0].info.run_id, model_file, register=False)
            self.client.set_tag(self.parent_id, "best_model_trial_id", trial_id)

    def _log_model(self, run_id: str, path: Path, *, register: bool) -> None:
        import keras
        import mlflow.keras
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        model = keras.saving.load_model(path, compile=False)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.input_shape[1:]))]),
            outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.output_shape[1:]))]))
        name = self.config.registered_model_name if register else None
        Model.log(
            artifact_path=None, name="model", flavor=mlflow.keras, model=model, run_id=run_id,
            signature=signature,
            registered_model_name=name.format(space=self._space_dir.name) if name else None,
            # Explicit requirements: inferring them loads the model again in a subprocess.
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={version('tensorflow')}"],
        )

    def _tags(self, tags: dict[str, Any]) -> list[Any]:
        from mlflow.entities import RunTag

        return [RunTag(k, str(v)[:TAG_LIMIT]) for k, v in tags.items()]


def log_report(space_dir: Path, paths: list[Path], artifact_path: str = "report") -> str:
    """Attach files (the report's, feature maps, ...) to the search's parent run under
    `artifact_path`; say what happened in one line."""
    record = space_dir / "mlflow.json"
    config = load_config()
    if not config.enabled or not record.exists():
        return "MLflow: tracking is off for this search; the report stays on disk."
    run = json.loads(record.read_text())
    uri = os.environ.get("MLFLOW_TRACKING_URI") or run["tracking_uri"]
    why = unreachable(uri)
    if why:
        return f"warning: MLflow tracking is unavailable ({uri}: {why}); the report stays on disk."
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        client = mlflow.MlflowClient(uri)
        for path in paths:
            client.log_artifact(run["run_id"], str(path), artifact_path)
    except Exception as e:  # noqa: BLE001 - the report on disk is what matters
        return f"warning: could not log the report to MLflow run {run['run_id']} at {uri}: {e}"
    return f"MLflow: {artifact_path.split('/')[0]} logged to run {run['run_id']} (artifacts/{artifact_path}) at {uri}"
