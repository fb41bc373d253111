"""Talking to an MLflow store safely: reachable, created once, retried, never failing a search.

Shared by the search's tracker, the promotion's registry and the commands that attach
files to a search's run. MLflow retries an unreachable HTTP server with backoff for minutes
and a fresh SQLite store runs its schema migrations on first use, racing any other process
that starts at the same instant ("duplicate column name"); `connect` checks the server
first, with a short timeout, and migrates a SQLite store under a file lock. `Retrying`
repeats a call that failed for a moment (a locked SQLite file, a dropped connection, a tag
that another process inserted first), with tenacity's exponential backoff and jitter; a
server that is gone (its health check does not answer) is not retried: the tracker then
says "tracking lost" at once and sends what was missed when it is back (tracker.py).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from search.redaction import redact
from search.runs import atomic
from search.runs.layout import SpaceDir
from search.runs.locks import FolderLock
from search.tracking.config import load_config, unreachable, version

# The words of errors that pass: a retry a moment later succeeds. The tags entries: two
# processes setting the same new tag on one run (the workers of a study share their search's
# run) both insert it and one fails (mlflow#8442); retried, it finds the tag and updates it.
_TRANSIENT = ("database is locked", "database table is locked", "connection", "timed out", "temporarily",
              "deadlock", "could not serialize", "503", "502", "504",
              "unique constraint failed: tags.", 'unique constraint "tag_pk"')
RETRIES = 5


class Unavailable(Exception):
    """The tracking store cannot be reached or opened; the message says why."""


def _transient(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(word in text for word in _TRANSIENT)


class Retrying:
    """An MlflowClient whose calls are repeated, with backoff, when they fail for a moment."""

    def __init__(self, client: Any, uri: str = ""):
        self._client, self._uri = client, uri

    def _worth_retrying(self, error: BaseException) -> bool:
        return _transient(error) and not unreachable(self._uri, timeout=2.0)

    def __getattr__(self, name: str) -> Any:
        import tenacity

        method = getattr(self._client, name)
        if not callable(method):
            return method
        return tenacity.retry(
            stop=tenacity.stop_after_attempt(RETRIES + 1),
            wait=tenacity.wait_exponential(multiplier=0.2) + tenacity.wait_random(0, 0.3),
            retry=tenacity.retry_if_exception(self._worth_retrying), reraise=True)(method)


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def quiet() -> None:
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # An unreachable server must cost seconds, not minutes of retries with backoff.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # Against a server MLflow prints two links for every run it ends, and a progress bar for
    # every download: a line or three per trial in a search's output, which says it better.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def connect(uri: str) -> Retrying:
    """A client of the store at `uri`, created (and migrated) once whoever else starts now."""
    why = unreachable(uri)
    if why:
        raise Unavailable(f"cannot reach the tracking server {redact(uri)}: {why}")
    import mlflow

    quiet()  # after the import: mlflow sets its own loggers' levels when it loads

    database = sqlite_path(uri)
    try:
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            with FolderLock(database.with_name(f"{database.name}.lock"), doing="creating the MLflow store", wait=300):
                if not database.exists():
                    _create_sqlite_store(database)
            client = mlflow.MlflowClient(uri)
        else:
            client = mlflow.MlflowClient(uri)
    except Unavailable:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the store says, in one line
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise Unavailable(f"cannot open the tracking store {redact(uri)}: {type(e).__name__}: {redact(first)}") from None
    return Retrying(client, uri)


def _create_sqlite_store(database: Path) -> None:
    """A new SQLite store, its schema migrated in a temporary file renamed into place: MLflow's
    migrations are many steps, and a process killed between two of them left a file whose next
    opening failed ("table ... already exists") for every later search."""
    import mlflow

    for stale in database.parent.glob(f".{database.stem}.*.tmp{database.suffix}"):
        stale.unlink(missing_ok=True)  # a creation killed midway
    with atomic.writing(database) as tmp:
        mlflow.MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)  # creates and migrates it


def runs_page(uri: str, experiment_id: str) -> str:
    """Where a user sees the experiment's runs (MLflow 3 opens an experiment on another tab by default)."""
    if uri.startswith(("http://", "https://")):
        return f"runs: {redact(uri).rstrip('/')}/#/experiments/{experiment_id}/runs"
    return (f"to browse: mlflow ui --backend-store-uri {redact(uri)}, then "
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs")


def artifact_location(uri: str, configured: str | None) -> str | None:
    """Where a new experiment keeps its artifacts: as configured, or mlartifacts/ beside a SQLite file."""
    database = sqlite_path(uri)
    if configured is None and database is not None:
        return (database.parent / "mlartifacts").resolve().as_uri()
    if configured and "://" not in configured:
        return Path(configured).resolve().as_uri()
    return configured


def experiment_id(client: Any, name: str, uri: str, configured_location: str | None) -> str:
    """The experiment called `name`, created when missing; safe when several processes create it at once."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location(uri, configured_location)))
    except Exception:  # noqa: BLE001 - another process created it first (RESOURCE_ALREADY_EXISTS)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def signature(model: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.input_shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.output_shape[1:]))]))


def log_keras_model(run_id: str, model: Any, *, registered_name: str | None = None) -> Any:
    """Log a Keras model (or a .keras file) as an MLflow model of `run_id`; returns its ModelInfo."""
    import keras
    import mlflow.keras
    from mlflow.models import Model

    if not isinstance(model, keras.Model):
        model = keras.saving.load_model(model, compile=False)
    return Model.log(
        artifact_path=None, name="model", flavor=mlflow.keras, model=model, run_id=run_id,
        signature=signature(model), registered_model_name=registered_name, await_registration_for=60,
        # Explicit requirements: inferring them loads the model again in a subprocess.
        pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={version('tensorflow')}"],
    )


def search_run(folder: SpaceDir) -> tuple[str, str] | None:
    """(tracking URI, run id) of the search's parent run, from mlflow.json; the URI's secrets,
    left out of the file, come back from MLFLOW_TRACKING_URI or mlflow.yaml."""
    try:
        record = json.loads(folder.mlflow_record.read_text())
    except (OSError, ValueError):
        return None
    from search.tracking.config import tracking_uri

    uri = tracking_uri(load_config(), folder.path.parent, folder.name)
    recorded = record.get("tracking_uri", "")
    if redact(uri) != recorded:
        uri = recorded  # configured differently since; only a secret-free URI can be used as recorded
    return uri, str(record["run_id"])


def attach(folder: SpaceDir, paths: list[Path], artifact_path: str = "report") -> str:
    """Attach files (a report's, feature maps, ...) to the search's parent run under
    `artifact_path`; say what happened in one line."""
    config = load_config()
    found = search_run(folder)
    if not config.enabled or found is None:
        return "MLflow: tracking is off for this search; the files stay on disk."
    uri, run_id = found
    try:
        client = connect(uri)
        for path in paths:
            client.log_artifact(run_id, str(path), artifact_path)
    except Unavailable as e:
        return f"warning: MLflow tracking is unavailable ({e}); the files stay on disk."
    except Exception as e:  # noqa: BLE001 - the files on disk are what matters
        return f"warning: could not log to MLflow run {run_id} at {redact(uri)}: {redact(str(e))[:300]}"
    return f"MLflow: {artifact_path.split('/')[0]} logged to run {run_id} (artifacts/{artifact_path}) at {redact(uri)}"


def log_search_metrics(folder: SpaceDir, metrics: dict[str, float]) -> None:
    """Metrics on the search's MLflow run (importance_<name>, ...); the files on disk are what matters."""
    found = search_run(folder)
    if not load_config().enabled or found is None:
        return
    try:
        client = connect(found[0])
        for name, value in metrics.items():
            client.log_metric(found[1], name, float(value))
    except Exception:  # noqa: BLE001 - tracking never fails a command
        pass
