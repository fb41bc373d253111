"""A full disk, told as what it is: which folder, how much room a search there needs.

Any write of a search can meet a full disk (a trial's model, a record, the best model's
copy, the data cache). Each write is atomic, so what is on disk stays whole; the search
then stops at the trial loop's boundary (its MLflow runs end KILLED) and the command says
in one line where to make room, so that the same command resumes where it stopped.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from search.errors import SearchError

_FULL = (errno.ENOSPC, errno.EDQUOT)
# How the libraries that write without an errno (h5py, TensorFlow's file system) say it.
_SAID = ("No space left on device", "Disk quota exceeded", "database or disk is full")


class DiskFull(SearchError):
    """No room left on the disk of a runs folder."""


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, says the disk is full."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, DiskFull):
            return True
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if any(said in str(error) for said in _SAID):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _megabytes(size: float) -> str:
    return f"{size / 2**20:,.0f} MB" if size >= 2**20 else f"{size / 2**10:,.0f} KB"


def disk_full(error: BaseException, folder: Path) -> DiskFull:
    """The one line for a full disk under `folder` (a runs folder or a search's folder in it)."""
    where = Path(folder)
    while not where.is_dir() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    trials = [p for p in Path(folder).glob("**/trials/*") if p.is_dir()]
    # A trial writes its own folder, then may copy its model to best.keras: room for the largest one twice.
    needed = 2 * max((_size(t) for t in trials), default=0) + 2**20
    return DiskFull(
        f"the disk holding {where} is full ({_megabytes(free)} free); a trial there needs about {_megabytes(needed)}: "
        f"make room (or pass --runs-dir DIR on a larger disk), then run the same command again to resume."
    )
