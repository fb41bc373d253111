"""Mistakes a search is refused for before it does any work: one line, exit 2, nothing written.

`check_command` runs first, before TensorFlow is imported (importing it takes tens of
seconds): the space file's own settings with the options applied, its hyperparameters
(`search.declared`), and the data's layout (no such path, no class folders, an empty class,
a single class). `check_services` runs once the space is loaded: the Optuna storage and the
tracking server must connect and accept this user, or the search would stop at its first
write with a data cache and a runs folder made.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from search import declared
from search.data import locate
from search.declare import Data, Search
from search.errors import SearchError, SpaceError
from search.redaction import redact
from search.spacefile import run_file


def check_command(space_file: str, *, data_path: str | None, sets: dict[str, str], time_budget: str | None,
                  smoke: bool = False, **options: Any) -> None:
    """SpaceError or DataError for a space file, options or data that cannot make a search.
    `options`: the Search settings given on the command line (max_trials, epochs, algorithm, seed)."""
    path = Path(space_file)
    module = run_file(path, "_search_preflight_")  # its settings only: nothing of the search is imported
    data, search = getattr(module, "data", None), getattr(module, "search", None)
    if not isinstance(data, Data):
        return  # load_space says what is missing
    search = search if isinstance(search, Search) else Search()
    given = {k: v for k, v in options.items() if v is not None}
    try:
        search = dataclasses.replace(search, **given)
    except (SearchError, TypeError) as e:
        raise SpaceError(f"{path}: {e}") from None
    if time_budget is not None:
        try:
            dataclasses.replace(search, time_budget=time_budget)
        except SearchError as e:  # said as the option it came from, as the command says it once the space is loaded
            raise SearchError(str(e).replace("Search(time_budget=", "--time-budget (")) from None
    if search.fine_tune_best is not None and callable(getattr(module, "build_model", None)):
        raise SpaceError(f"{path}: Search(fine_tune_best={search.fine_tune_best!r}) ranks trials on a probe of a "
                         "cached backbone, and this space builds its own model (build_model): drop fine_tune_best, "
                         "or declare a backbone instead of build_model.")
    declare = getattr(module, "hyperparameters", None)
    if callable(declare):  # load_space says when it is missing
        pinned = set(sets) | ({"weights", "image_size"} if smoke else set())
        declared.check(path, declare, own_model=callable(getattr(module, "build_model", None)), skip=pinned)
    data_fields = {f.name for f in dataclasses.fields(Data)}
    if data_fields.isdisjoint(sets):  # a Data setting given with --set is applied by load_space, then checked
        locate.check_layout(data, data_path)


def check_services(options: dict[str, Any], tracking_uri: str | None, space_dir: Path) -> None:
    """SearchError when the Optuna storage URL or the tracking URI does not connect or authenticate."""
    storage = options.get("storage")
    if storage and "://" in str(storage):
        from search.engine.optuna_storage import open_storage

        opened = open_storage(str(storage), space_dir)  # a SearchError in one line when it cannot
        engine = getattr(opened, "engine", None)
        if engine is not None:
            engine.dispose()
    if tracking_uri:
        why = _tracking_refuses(tracking_uri)
        if why:
            raise SearchError(f"the tracking store {redact(tracking_uri)} {why}; start it or fix MLFLOW_TRACKING_URI "
                              "(or mlflow.yaml's tracking_uri), or pass --no-tracking.")


def _tracking_refuses(uri: str) -> str | None:
    """Why the tracking store at `uri` cannot be used, or None. A local file store always can."""
    scheme = uri.partition("://")[0].lower() if "://" in uri else ""
    if scheme in ("http", "https"):
        return _server_refuses(uri)
    if not scheme or scheme in ("file", "sqlite", "databricks"):
        return None
    import sqlalchemy

    try:
        sqlalchemy.create_engine(uri).connect().close()
    except Exception as e:  # noqa: BLE001 - whatever the database says, in one line
        first = (str(getattr(e, "orig", e)).strip().splitlines() or [""])[0]
        return f"cannot be opened ({type(e).__name__}: {redact(first)[:300]})"
    return None


def _server_refuses(uri: str, timeout: float = 30.0) -> str | None:
    """Why an MLflow server does not answer this user's requests, or None when it does."""
    # A closed port is refused at once; the timeout only waits for a server that is busy, not down.
    parts = urllib.parse.urlsplit(uri)
    host = f"{parts.hostname or 'localhost'}{f':{parts.port}' if parts.port else ''}"
    base = f"{parts.scheme}://{host}{parts.path.rstrip('/')}"
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    user = urllib.parse.unquote(parts.username or "") or os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = urllib.parse.unquote(parts.password or "") or os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user or password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return f"refuses these credentials (HTTP {e.code})"
        return None  # it answered: whatever else it says is the tracker's to handle
    except (OSError, ValueError) as e:
        return f"does not answer ({getattr(e, 'reason', e)})"
    return None
