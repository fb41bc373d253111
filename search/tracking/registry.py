"""The registry side of tracking: the promoted model as its own MLflow run, registered, with
the `champion` alias on the best version.

Reads the same configuration as the search's tracking (mlflow.yaml, MLFLOW_TRACKING_URI
overriding `tracking_uri`) and logs to the same experiment and registered model. Callers
treat any exception from here as a warning: an unreachable server never fails a promotion.

MLflow has no compare-and-set for aliases, and promotions on several machines may move one
at the same time. So the alias is moved to the best-scoring version among all versions
registered for the same objective (not merely to the newest), then read back after a pause;
if another promoter moved it meanwhile, the comparison is made again. Every promoter thus
converges on the same best version, and a worse one never keeps the alias for long.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from search.redaction import redact
from search.liveness import stale_runs, workers
from search.runs import faults
from search.runs.layout import RunsDir
from search.tracking import client as clients
from search.tracking.config import load_config, tracking_uri

CHAMPION = "champion"
SUPERSEDED = "superseded_by"
SETTLE_SECONDS = 1.0
ROUNDS = 5

Score = tuple[float, float]


def version_score(client: Any, version: Any, objective: str) -> Score | None:
    """A registered version's score for `objective`: its tags, else its trial run's metrics."""
    tags = dict(version.tags or {})
    if "score" in tags and tags.get("objective", "val_accuracy") == objective:
        first, second = json.loads(tags["score"])
        return float(first), float(second)
    if objective == "val_accuracy" and "val_accuracy" in tags and "score" not in tags:
        return float(tags["val_accuracy"]), -float(tags.get("val_log_loss", "inf"))
    # A best trial registered by hand from a trial run: its best-epoch metrics.
    run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    if f"best_{objective}" not in run_metrics:
        return None
    value = float(run_metrics[f"best_{objective}"])
    loss = float(run_metrics.get("best_val_loss", float("inf")))
    return (-value, run_metrics.get("best_val_accuracy", 0.0)) if objective == "val_loss" else (value, -loss)


def _best_version(client: Any, name: str, objective: str) -> tuple[Any, Score] | None:
    best: tuple[Any, Score] | None = None
    for version in client.search_model_versions(f"name = '{name}'"):
        if (version.tags or {}).get(SUPERSEDED):  # a champion replaced with --force never comes back on its own
            continue
        score = version_score(client, version, objective)
        # Higher score first; on a tie the earlier version keeps it.
        if score is not None and (best is None or score > best[1] or
                                  (score == best[1] and int(version.version) < int(best[0].version))):
            best = (version, score)
    return best


def _alias(client: Any, name: str) -> Any | None:
    import mlflow

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def move_champion(client: Any, name: str, version: str, objective: str) -> str:
    """Point `champion` at the best version for `objective`; say where it ended and whether ours."""
    before = _alias(client, name)
    best: tuple[Any, Score] | None = None
    target = ""
    for _ in range(ROUNDS):
        best = _best_version(client, name, objective)
        if best is None:
            return f"; alias {CHAMPION!r} left as it is (no version scored on {objective})"
        target = str(best[0].version)
        current = _alias(client, name)
        if current is None or str(current.version) != target:
            client.set_registered_model_alias(name, CHAMPION, target)
        time.sleep(SETTLE_SECONDS)
        settled = _alias(client, name)
        if settled is not None and str(settled.version) == target and _best_version(client, name, objective) == best:
            break
    assert best is not None
    if target == version:
        was = f" (was version {before.version})" if before is not None and str(before.version) != version else ""
        return f"; alias {CHAMPION!r} moved to it{was}"
    return f"; {CHAMPION!r} stays on version {target}, which scores better on {objective} ({best[1][0]:.4f})"


def force_champion(client: Any, name: str, version: str, objective: str) -> str:
    """Point `champion` at `version` whatever the scores (`search.ensemble --force`); the versions
    scoring better are tagged superseded, so that later promotions do not move it back to them."""
    ours = client.get_model_version(name, version)
    mine = version_score(client, ours, objective)
    for other in client.search_model_versions(f"name = '{name}'"):
        theirs = version_score(client, other, objective)
        if str(other.version) != version and theirs is not None and (mine is None or theirs > mine):
            client.set_model_version_tag(name, str(other.version), SUPERSEDED, version)
    before = _alias(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    was = f" (was version {before.version})" if before is not None and str(before.version) != version else ""
    return f"; alias {CHAMPION!r} moved to it as --force asks{was}"


def _mark_champion(client: Any, experiment_id: str, run_id: str, search_run_id: str | None, promoted: dict[str, Any],
                   objective: str) -> None:
    """Only the new champion's run keeps the tag champion=true; the search's run names it and
    carries its score, so the runs list shows both without opening anything."""
    earlier = client.search_runs([experiment_id], filter_string=f"tags.{CHAMPION} = 'true'", max_results=1000)
    for run in earlier:
        if run.info.run_id != run_id:
            client.set_tag(run.info.run_id, CHAMPION, "replaced")
    if search_run_id is None:
        return
    client.set_tag(search_run_id, "champion_run_id", run_id)
    for key in (objective, f"held_out_{objective}"):
        if isinstance(promoted.get(key), float):
            client.log_metric(search_run_id, f"champion_{key}", promoted[key])


def log_promotion(*, space: str, runs_dir: Path, model: Any, summary: dict[str, Any], metrics: dict[str, float],
                  score: Score, force: bool = False) -> str:
    """Log the promoted model as a run, register it and move `champion` if it is the best (to it
    whatever the scores when `force`); say what happened."""
    config = load_config()
    if not config.enabled:
        return "MLflow: tracking is disabled in mlflow.yaml; nothing logged."
    uri = tracking_uri(config, runs_dir, space)
    client = clients.connect(uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    promoted = summary["promoted"]
    objective = summary.get("objective", "val_accuracy")
    name = config.registered_model_name.format(space=space) if config.registered_model_name else None
    experiment = config.experiment.format(space=space)
    # With the liveness tags, a process killed while it logs leaves no run RUNNING for ever.
    tags = {"kind": "ensemble", "space": space, "promoted": promoted["method"], "refit": str(summary["refit"]),
            **stale_runs.tags(workers.this_worker())}
    search_run = clients.search_run(RunsDir(runs_dir).space(space))
    if search_run is not None and search_run[0] == uri:
        # A row of its own in the runs list (nested, it would hide in the search's collapsed row).
        tags["search_run_id"] = search_run[1]
    experiment_id = clients.experiment_id(client, experiment, uri, config.artifact_location)
    members = " + ".join(m if w == 1 else f"{m} x{w}" for m, w in zip(promoted["members"], promoted["weights"]))
    tags[CHAMPION] = "true"  # the runs list finds it: tags.champion = 'true'
    run = client.create_run(experiment_id, run_name=f"champion: {promoted['method'].replace('_', ' ')} {members}"[:250],
                            tags=tags)
    run_id = run.info.run_id
    try:
        faults.point("promotion-logging")
        params = {"method": promoted["method"], "members": ",".join(promoted["members"]),
                  "weights": ",".join(str(w) for w in promoted["weights"]), "refit": summary["refit"],
                  "top_k": summary["top_k"], "rounds": summary["rounds"], "objective": objective}
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        for key, value in metrics.items():
            client.log_metric(run_id, key, float(value))
        client.log_dict(run_id, summary, "ensemble.json")
        info = clients.log_keras_model(run_id, model, registered_name=name)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    _mark_champion(client, experiment_id, run_id, search_run[1] if search_run and search_run[0] == uri else None,
                   promoted, objective)
    message = f"MLflow: run {run_id} in experiment {experiment!r} ({redact(uri)})"
    if not name:
        return message + "; no registered_model_name in mlflow.yaml, so nothing registered."
    version = str(info.registered_model_version)
    version_tags = {
        "score": json.dumps(list(score)), "objective": objective,
        "val_accuracy": repr(promoted["val_accuracy"]), "val_log_loss": repr(promoted["val_log_loss"]),
        "method": promoted["method"], "members": ",".join(promoted["members"]),
        "weights": ",".join(str(w) for w in promoted["weights"]), "refit": str(summary["refit"]),
        **{key: repr(value) for key, value in promoted.items() if key.startswith("held_out_val_")},
        **({"sha256": promoted["sha256"]} if "sha256" in promoted else {}),
    }
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    moved = force_champion(client, name, version, objective) if force else move_champion(client, name, version, objective)
    return message + f"; registered {name!r} version {version}" + moved + "."
