"""What MLflow tracking records and where: `mlflow.yaml`, the tracking URI, the search's tags.

Plain Python with no mlflow import, so the report and other tools can read the same
configuration cheaply; `search.tracking.tracker` does the logging.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from search.errors import SearchError, did_you_mean
from search.core.hooks import SearchInfo
from search.redaction import redact_all

CONFIG_FILE = "mlflow.yaml"
REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "keras-tuner", "optuna", "mlflow", "numpy", "pandas")


@dataclasses.dataclass(frozen=True)
class TrackingConfig:
    """`mlflow.yaml`; placeholders {runs_dir} and {space} are filled in per search."""

    enabled: bool = True
    tracking_uri: str = "sqlite:///{runs_dir}/mlflow.db"
    artifact_location: str | None = None
    experiment: str = "transfer-search/{space}"
    log_models: str = "best"
    registered_model_name: str | None = "{space}-classifier"
    flush_seconds: float = 10.0
    # Every trial's model, val probabilities and record as artifacts of its run, so that the
    # report and the ensemble of a study shared by several machines see all of its trials.
    log_trial_artifacts: bool = True
    # A RUNNING run whose process cannot be checked (another machine) and whose heartbeat tag
    # is older than this is marked KILLED by the next search that starts or ends.
    stale_after_minutes: float = 30.0
    # A store lost during a search is waited for this long at its end, to send what it missed;
    # still lost then, the next start of the search sends it.
    reconnect_seconds: float = 60.0


def load_config(path: Path | None = None) -> TrackingConfig:
    """Read `path`, else ./mlflow.yaml, else the repository's; defaults when none exists."""
    candidates = [path] if path else [Path.cwd() / CONFIG_FILE, REPO_ROOT / CONFIG_FILE]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return TrackingConfig()
    try:
        raw = yaml.safe_load(found.read_text()) or {}
    except yaml.YAMLError as e:
        raise SearchError(f"{found} is not valid YAML ({e}); fix it or delete it to use the defaults.") from None
    fields = {f.name for f in dataclasses.fields(TrackingConfig)}
    for key in raw:
        if key not in fields:
            raise SearchError(f"{found}: unknown key {key!r}.{did_you_mean(str(key), fields)} "
                              f"Known keys: {', '.join(sorted(fields))}.")
    config = TrackingConfig(**raw)
    if config.log_models not in ("best", "all", "none"):
        raise SearchError(f"{found}: log_models must be best, all or none, but got {config.log_models!r}.")
    return config


def tracking_uri(config: TrackingConfig, runs_dir: Path, space: str) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri
    return uri.format(runs_dir=runs_dir.resolve().as_posix(), space=space)


def shared(uri: str, runs_dir: Path) -> bool:
    """Whether workers with other runs folders (other machines) can log to the store at `uri`:
    any store but a SQLite file or folder inside `runs_dir` (the default store is one)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    elif uri.startswith("file:"):
        path = Path(urllib.parse.urlsplit(uri).path)
    elif "://" not in uri:
        path = Path(uri)
    else:
        return True
    return not path.resolve().is_relative_to(runs_dir.resolve())


def unreachable(uri: str, timeout: float = 3.0) -> str | None:
    """Why an http(s) tracking server cannot be reached, or None when it answers."""
    if not uri.startswith(("http://", "https://")):
        return None
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or "localhost"
    bare = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    try:
        urllib.request.urlopen(bare + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered: a server is there
    except (OSError, ValueError) as e:
        return str(getattr(e, "reason", e))
    return None


def version(package: str) -> str:
    for name in (package, f"{package}-cpu"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def search_tags(search: SearchInfo) -> dict[str, Any]:
    """What identifies a search: its space, code, data, libraries and hardware."""
    data, settings = search.data, search.settings
    commit = _git("rev-parse", "HEAD")
    tags: dict[str, Any] = {
        "space_file": search.space_path, "space_sha256": hashlib.sha256(search.space_path.read_bytes()).hexdigest(),
        "git_commit": commit or "unknown", "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "strategy": search.strategy, "replicas": search.replicas, "seed": search.seed,
        "data.layout": data.get("layout"), "data.root": data.get("root"), "data.num_classes": data.get("num_classes"),
        "data.classes": ", ".join(map(str, data.get("classes", []))),
        "data.counts": " ".join(f"{k}={v}" for k, v in (data.get("counts") or {}).items()),
        "data.skipped_files": data.get("skipped"), "data.content_hash": data.get("content_hash"),
        "overrides": json.dumps(search.overrides, default=str), "python": sys.version.split()[0],
        "mlflow.source.name": search.space_path,
    }
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tags.update({f"search.{k}": json.dumps(v, default=str) if isinstance(v, dict) else v
                 for k, v in redact_all(settings).items()})
    for package in LIBRARIES:
        try:
            tags[f"version.{package}"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return tags
