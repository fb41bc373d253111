"""A search on disk, found again after it ran: its folder, its record, its data and models.

`python -m search.ensemble` and `python -m search.predict` take the same SPACE as
`python -m search.run` (a space file), or the name of a space under the runs directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from search.data import ImageData
from search.errors import SearchError, did_you_mean

log = logging.getLogger("search")


@dataclasses.dataclass
class SavedSearch:
    """runs/<name>/ and its search.json (written by `search.run` before the first trial)."""

    name: str
    space_dir: Path
    runs_dir: Path
    record: dict[str, Any]
    space: Any | None  # the loaded space file, when it could be loaded

    @property
    def class_names(self) -> list[str]:
        return list(self.record.get("data", {}).get("classes", []))

    @property
    def seed(self) -> int:
        return int(self.record.get("seed", 0))

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.record.get("settings", {}))

    def open_data(self) -> ImageData:
        """The dataset the search ran on (its recorded root, so --data and builtins work)."""
        from search.data import open_data
        from search.declare import Data

        fingerprint = self.record.get("data", {})
        spec = self.space.data if self.space is not None else Data()
        root = fingerprint.get("root") or spec.path
        data = open_data(dataclasses.replace(spec, path=root), runs_dir=self.runs_dir, seed=self.seed)
        recorded = fingerprint.get("content_hash")
        if recorded and data.fingerprint.get("content_hash") != recorded:
            log.warning("the data under %s changed since the search ran; scores may not be comparable", root)
        return data


def locate(space: str, runs_dir: Path) -> SavedSearch:
    """Find the search for a space file or a space name; SearchError when it never ran."""
    runs_dir = Path(runs_dir)
    loaded = None
    path = Path(space)
    if path.suffix == ".py" or path.is_file():
        from search.space import load_space

        loaded = load_space(path)
        name = loaded.name
    else:
        name = space
    space_dir = runs_dir / name
    record_file = space_dir / "search.json"
    if not record_file.is_file():
        searched = sorted(p.parent.name for p in runs_dir.glob("*/search.json")) if runs_dir.is_dir() else []
        known = f" Searched spaces under {runs_dir}: {', '.join(searched)}." if searched else ""
        raise SearchError(
            f"no search of {name!r} in {space_dir}.{did_you_mean(name, searched)}{known} "
            f"Run `python -m search.run {space if loaded else 'spaces/' + name + '.py'}` first, "
            f"or pass the --runs-dir it used."
        )
    record = json.loads(record_file.read_text())
    if loaded is None and record.get("space") and Path(record["space"]).is_file():
        from search.space import load_space

        try:
            loaded = load_space(record["space"])
        except SearchError:
            loaded = None  # the space file changed since; the recorded data root is enough
    return SavedSearch(name=name, space_dir=space_dir, runs_dir=runs_dir, record=record, space=loaded)
