"""Every file the tool writes, written so that a crash leaves the old file or the new one.

A file is written to a temporary name in the same folder, flushed to disk (fsync), renamed
over the target and the folder is flushed too: a process killed at any instant, or a
machine that loses power, leaves either the previous version or the complete new one,
never half of one. Temporary names are unique per call, so processes and threads that
write the same file at once never trip over each other's temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from search.runs import faults


def temporary_name(path: Path) -> Path:
    """A unique hidden name beside `path` that keeps its suffix (Keras insists on `.keras`)."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    if path.is_dir():  # a SavedModel or other folder: flush what is inside
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_file(child)
        return
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to; on success it replaces `path`.

        with atomic.writing(space_dir / "model.keras") as tmp:
            model.save(tmp)

    On an exception the temporary file is removed and `path` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(target)
    try:
        yield tmp
        _fsync_file(tmp)
        faults.before_replace(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)


def write_with(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call `write(temporary path)`, then replace `path` with what it wrote."""
    with writing(path) as tmp:
        write(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, default=str))


def save_npy(path: str | os.PathLike[str], array: Any) -> Path:
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # np.save(name) would append .npy to the temporary name
            np.save(f, array)

    return write_with(path, save)


def copy_file(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    return write_with(path, lambda tmp: shutil.copyfile(source, tmp))


def sha256_of(path: Path) -> str:
    """A file's sha256 (hex), read a block at a time: what tells a file written whole from one
    cut short or replaced, and one weights file from another."""
    found = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            found.update(block)
    return found.hexdigest()
