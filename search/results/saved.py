"""A search on disk, found again after it ran: its folder, its record, its space file and data.

`python -m search.ensemble`, `.predict`, `.report`, `.export` and `.featuremaps` take the same
SPACE as `python -m search.run` (a space file: its folder is named after the space's `name`,
else the file's stem), or the name of a space searched under the runs folder.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from search.data.dataset import ImageData, open_data
from search.declare import Data
from search.errors import SearchError, did_you_mean
from search.runs.layout import RunsDir, SpaceDir, read_record
from search.space import Space, load_space

log = logging.getLogger("search")


@dataclasses.dataclass
class SavedSearch:
    """A search on disk, found again after it ran: its folder, search.json and space file."""

    name: str
    folder: SpaceDir
    runs: RunsDir
    record: dict[str, Any]
    space: Space | None  # the space file, when it still loads

    @property
    def space_dir(self) -> Path:
        return self.folder.path

    @property
    def runs_dir(self) -> Path:
        return self.runs.path

    @property
    def class_names(self) -> list[str]:
        return list(self.record.get("data", {}).get("classes", []))

    @property
    def seed(self) -> int:
        return int(self.record.get("seed", 0))

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.record.get("settings", {}))

    @property
    def objective(self) -> str:
        return str(self.settings.get("objective", "val_accuracy"))

    def open_data(self) -> ImageData:
        """The dataset the search ran on (its recorded root, so --data and builtins work)."""
        fingerprint = self.record.get("data", {})
        spec = self.space.data if self.space is not None else Data()
        root = fingerprint.get("root") or spec.path
        data = open_data(dataclasses.replace(spec, path=root), runs_dir=self.runs_dir, seed=self.seed)
        recorded = fingerprint.get("content_hash")
        if recorded and data.fingerprint.get("content_hash") != recorded:
            log.warning("the data under %s changed since the search ran; scores may not be comparable", root)
        return data



def locate(space: str, runs_dir: str | Path) -> SavedSearch:
    """The search of a space file or a space name under `runs_dir`; SearchError when it never ran."""
    runs = RunsDir(Path(runs_dir))
    loaded = None
    path = Path(space)
    if path.is_file():
        loaded = load_space(path)
        name = loaded.name
    else:  # a space name, or a space file since deleted: its results are under its stem
        name = path.stem if path.suffix == ".py" else space
    folder = runs.space(name)
    if not folder.record.is_file():
        searched = runs.searched()
        known = f" Searched spaces under {runs.path}: {', '.join(searched)}." if searched else ""
        elsewhere = "" if runs.path == Path("runs") else f" --runs-dir {runs.path}"
        raise SearchError(
            f"no search of {name!r} in {folder.path}.{did_you_mean(name, searched)}{known} "
            f"Run `python -m search.run {space if loaded else 'spaces/' + name + '.py'}{elsewhere}` first, "
            f"or pass the --runs-dir it used."
        )
    record = read_record(folder)
    if loaded is None and record.get("space") and Path(record["space"]).is_file():
        try:
            loaded = load_space(record["space"])
        except SearchError:
            loaded = None  # the space file changed since; the recorded data root is enough
    return SavedSearch(name=name, folder=folder, runs=runs, record=record, space=loaded)
