"""The champion on disk: champion.keras, its description ensemble.json, and the digest binding them.

ensemble.json keeps the champion's sha256, so whoever serves or keeps the file can tell it is
the one promoted (a copy cut short, a disk that lost its tail, a file replaced by hand).
A champion is replaced only by one that scores better on val by the search's objective
(log-loss breaking ties, the score the registry's `champion` alias follows too), unless the
user forces it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from search.ensembles.selection import Score, score_of
from search.errors import SearchError
from search.runs.atomic import sha256_of as digest
from search.runs.layout import SpaceDir


@dataclasses.dataclass(frozen=True)
class Current:
    """The champion in a folder now: its ensemble.json (None when there is none or it cannot be
    read) and whether champion.keras is the file that record describes."""

    record: dict[str, Any] | None
    intact: bool
    problem: str  # why it is not intact; "" when it is, or when there is no champion at all

    @property
    def exists(self) -> bool:
        return self.record is not None or bool(self.problem)


def current(folder: SpaceDir) -> Current:
    """Read ensemble.json and check champion.keras against the digest it keeps."""
    champion = folder.champion
    try:
        record = json.loads(folder.ensemble_record.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("promoted"), dict):
            raise ValueError("not an ensemble record")
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as e:
        problem = f"{folder.ensemble_record} cannot be read ({type(e).__name__})"
        return Current(None, False, problem if champion.exists() else "")
    if not champion.is_file():
        return Current(record, False, f"{champion} is missing" if record is not None else "")
    if record is None:
        return Current(None, False, f"{champion} has no {folder.ensemble_record.name} describing it")
    expected = record["promoted"].get("sha256")
    if expected is None:  # promoted before digests were kept: nothing to check against
        return Current(record, True, "")
    if digest(champion) != expected:
        return Current(record, False, f"{champion} does not match the sha256 kept in {folder.ensemble_record.name} "
                                      "(damaged or replaced)")
    return Current(record, True, "")


def checked(folder: SpaceDir, path: Path) -> None:
    """SearchError in one line when `path` is the folder's champion and does not match its digest."""
    if Path(path).resolve() != folder.champion.resolve():
        return
    found = current(folder)
    if found.record is not None and not found.intact:
        raise SearchError(f"{found.problem}; promote it again from the trial records: python -m search.ensemble "
                          f"{folder.name} --runs-dir {folder.path.parent}")


def score(row: dict[str, Any], objective: str) -> Score:
    """A promoted row's val score by `objective` (log-loss breaking ties), as the registry compares versions."""
    values = {k: float(v) for k, v in row.items() if k.startswith("val_") and isinstance(v, (int, float))}
    values.setdefault("val_loss", values.get("val_log_loss", float("inf")))
    return score_of(values, objective)


def describe(row: dict[str, Any], objective: str) -> str:
    members = " + ".join(m if w == 1 else f"{m} x{w}" for m, w in zip(row["members"], row["weights"]))
    loss = row.get("val_loss", row.get("val_log_loss"))
    return f"{row['method'].replace('_', ' ')} ({members}), val {objective.removeprefix('val_')} {row[objective]:.4f}, " \
           f"log-loss {loss:.4f}"
