"""A dataset given as a .zip (Kaggle's downloads): checked, then extracted once beside the runs.

Before anything is written the archive is checked against what it could do to the machine:
its total uncompressed size, its compression ratio (a zip bomb expands a thousandfold), the
free disk space it needs, and entries that would land outside the target folder. A killed
extraction is never reused: it happens in a temporary folder renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from search.errors import DataError
from search.runs.layout import RunsDir

log = logging.getLogger("search")

# What a dataset zip may hold when extracted; raise them for a bigger, trusted archive.
MAX_TOTAL_BYTES = int(os.environ.get("SEARCH_ZIP_MAX_BYTES", 200 * 2**30))
MAX_RATIO = 200  # uncompressed / compressed; images barely compress, a bomb does
FREE_SPACE_MARGIN = 1.1


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check(zip_path: Path, archive: zipfile.ZipFile, target_parent: Path) -> int:
    """Raise DataError unless the archive is safe to extract under `target_parent`; returns its size."""
    entries = archive.infolist()
    total = sum(e.file_size for e in entries)
    packed = sum(e.compress_size for e in entries) or 1
    if total > MAX_TOTAL_BYTES:
        raise DataError(
            f"{zip_path} would extract to {_gb(total)}, over the limit of {_gb(MAX_TOTAL_BYTES)}; extract it "
            f"yourself and pass the folder with --data, or raise SEARCH_ZIP_MAX_BYTES."
        )
    if total / packed > MAX_RATIO and total > 2**20:
        raise DataError(
            f"{zip_path} expands {total / packed:.0f}-fold ({_gb(packed)} to {_gb(total)}): that is a zip bomb, "
            f"not images. Download the dataset again from its source."
        )
    for entry in entries:
        parts = PurePosixPath(entry.filename).parts
        if entry.filename.startswith("/") or ".." in parts:
            raise DataError(f"{zip_path} holds an entry outside its own folder ({entry.filename!r}); "
                            "refusing to extract it. Download the dataset again from its source.")
    free = shutil.disk_usage(target_parent).free
    if total * FREE_SPACE_MARGIN > free:
        raise DataError(
            f"{zip_path} needs {_gb(total)} to extract and {target_parent} has {_gb(free)} free; free some "
            f"space, or pass a --runs-dir on a larger disk."
        )
    return total


def extract(zip_path: Path, runs_dir: Path) -> Path:
    """Extract a zip once into runs_dir/.data/<stem>-<hash of size and mtime>/; return that folder."""
    stat = zip_path.stat()
    tag = hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:8]
    target = RunsDir(runs_dir).extracted / f"{zip_path.stem}-{tag}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            check(zip_path, archive, target.parent)
            log.info("extracting %s to %s (once)", zip_path, target)
            from search.console import progress

            for entry in progress(archive.infolist(), f"extracting {zip_path.name}", unit="file"):
                archive.extract(entry, tmp)
        os.replace(tmp, target)
    except zipfile.BadZipFile as e:
        raise DataError(f"{zip_path} is not a readable zip ({e}); download it again.") from None
    except OSError as e:
        if target.is_dir():  # another process finished first
            return target
        raise DataError(f"extracting {zip_path} to {target.parent} failed ({e.strerror or e}); "
                        "check the free space and permissions there, or pass another --runs-dir.") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
