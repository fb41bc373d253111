"""The registry side of tracking: the promoted model as its own MLflow run, registered, with
the `champion` alias moved to it only when it beats the current champion.

Reads the same configuration as the search's tracking (`search.tracking.load_config`:
mlflow.yaml, with MLFLOW_TRACKING_URI overriding `tracking_uri`) and logs to the same
experiment and registered model. Callers treat any exception from here as a
warning: an unreachable tracking server must never fail a promotion.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from search import tracking

CHAMPION = "champion"


def _check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail fast: MLflow retries an unreachable HTTP server with backoff for minutes."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
        pass


def _experiment_id(client: Any, name: str, uri: str, artifact_location: str | None) -> str:
    """The space's experiment; created as search.tracking creates it when no search logged one."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = artifact_location
    if location is None and uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    elif location and "://" not in location:
        location = Path(location).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _version_score(client: Any, version: Any) -> tuple[float, float] | None:
    """(val_accuracy, -val_log_loss) of a registered version: its tags, else its run's metrics."""
    tags = dict(version.tags or {})
    if "val_accuracy" in tags:
        return float(tags["val_accuracy"]), -float(tags.get("val_log_loss", "inf"))
    # A best trial registered by search.tracking: its run's best-epoch metrics.
    metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    if "best_val_accuracy" not in metrics:
        return None
    return float(metrics["best_val_accuracy"]), -float(metrics.get("best_val_loss", float("inf")))


def log_promotion(
    *,
    space: str,
    runs_dir: Path,
    model: Any,
    summary: dict[str, Any],
    metrics: dict[str, float],
    score: tuple[float, float],
) -> str:
    """Log the promoted model as a run, register it and maybe move `champion`; say what happened.

    `score` is (val_accuracy, -val_log_loss) of the promoted selection; it is stored on the
    version and compared with the current champion's.
    """
    config = tracking.load_config()
    if not config.enabled:
        return "MLflow: tracking is disabled in mlflow.yaml; nothing logged."
    uri = tracking.tracking_uri(config, runs_dir, space)
    experiment = config.experiment.format(space=space)
    _check_reachable(uri)

    import keras
    import mlflow
    import mlflow.keras
    import numpy as np
    import tensorflow as tf
    from mlflow import MlflowClient

    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    promoted = summary["promoted"]
    name = config.registered_model_name.format(space=space) if config.registered_model_name else None
    tags = {"kind": "ensemble", "space": space, "promoted": promoted["method"], "refit": str(summary["refit"])}
    search_run = runs_dir / space / "mlflow.json"  # nest under the search's run when it is in this store
    if search_run.exists():
        record = json.loads(search_run.read_text())
        if record.get("tracking_uri") == uri and record.get("run_id"):
            tags["mlflow.parentRunId"] = record["run_id"]
    with mlflow.start_run(
        experiment_id=_experiment_id(client, experiment, uri, config.artifact_location),
        run_name=f"promoted: {promoted['method']}",
        tags=tags,
    ) as run:
        mlflow.log_params({
            "method": promoted["method"],
            "members": ",".join(promoted["members"]),
            "weights": ",".join(str(w) for w in promoted["weights"]),
            "refit": summary["refit"],
            "top_k": summary["top_k"],
            "rounds": summary["rounds"],
        })
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_dict(summary, "ensemble.json")
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.input_shape[1:]))]),
            outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *model.output_shape[1:]))]))
        # Explicit requirements: inferring them loads the model again in a subprocess.
        requirements = [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]
        info = mlflow.keras.log_model(
            model, name="model", signature=signature, pip_requirements=requirements,
            registered_model_name=name or None, await_registration_for=60,
        )
    message = f"MLflow: run {run.info.run_id} in experiment {experiment!r} ({uri})"
    if not name:
        return message + "; no registered_model_name in mlflow.yaml, so nothing registered."
    version = str(info.registered_model_version)
    tags = {
        "val_accuracy": repr(score[0]), "val_log_loss": repr(-score[1]), "method": promoted["method"],
        "members": ",".join(promoted["members"]), "weights": ",".join(str(w) for w in promoted["weights"]),
        "refit": str(summary["refit"]),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    current_score = _version_score(client, current) if current is not None else None
    message += f"; registered {name!r} version {version}"
    if current is None or current_score is None or score > current_score:
        client.set_registered_model_alias(name, CHAMPION, version)
        was = f" (was version {current.version}, val accuracy {current_score[0]:.4f})" if current_score else ""
        return message + f"; alias {CHAMPION!r} moved to it{was}."
    return message + (
        f"; {CHAMPION!r} stays on version {current.version} (val accuracy {current_score[0]:.4f} "
        f"vs {score[0]:.4f})."
    )
