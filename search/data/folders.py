"""Image files on disk: finding them in class folders, checking the folders make a dataset,
and checking once that every file decodes.

The check result is kept in runs/.data/checks/<hash of the root>.json, keyed by each file's
path, size and mtime, so reopening a dataset does not decode it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tensorflow as tf

from search.declare import Data
from search.errors import DataError
from search.runs import atomic
from search.runs.layout import RunsDir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def is_visible(path: Path) -> bool:
    """False for hidden entries and macOS zip debris (.DS_Store, ._x.jpg, __MACOSX/)."""
    return not path.name.startswith((".", "__"))


def image_files(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Image files in `folder` (and its sub-folders), sorted; other files are ignored."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if is_visible(Path(d))) if recursive else []
        found += [
            Path(dirpath) / name
            for name in filenames
            if is_visible(Path(name)) and name.lower().endswith(IMAGE_SUFFIXES)
        ]
    return sorted(found)


def class_folders(folder: Path) -> dict[str, list[Path]]:
    """{class name: its image files} for each visible sub-folder, in name order."""
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and is_visible(d))
    return {d.name: image_files(d) for d in subdirs}


def content_hash(root: Path, files: list[tuple[Path, int]]) -> str:
    """A cheap fingerprint of the file set: relative names and sizes, not contents."""
    digest = hashlib.sha256()
    for path, size in sorted((_relative(p, root), s) for p, s in files):
        digest.update(f"{path}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def checks_file(root: Path, runs_dir: Path) -> Path:
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return RunsDir(runs_dir).extracted / "checks" / f"{tag}.json"


def _reason(error: tf.errors.OpError) -> str:
    # TF prefixes "{{function_node ...}}" and suffixes " [Op:DecodeImage]": keep the middle.
    message = re.sub(r"\{\{.*?\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message).strip() or type(error).__name__


def _decode(path: Path) -> str | None:
    try:
        tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        return _reason(e)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    return None


def check_images(files: list[Path], root: Path, known: dict) -> tuple[dict[Path, str], dict]:
    """Decode each file not already in `known`; return ({bad file: reason}, updated entries)."""
    entries: dict[str, list] = {}
    todo: list[tuple[str, Path, list]] = []
    for path in files:
        stat = path.stat()
        key = _relative(path, root)
        cached = known.get(key)
        if cached and cached[:2] == [stat.st_size, stat.st_mtime_ns]:
            entries[key] = cached
        else:
            todo.append((key, path, [stat.st_size, stat.st_mtime_ns]))
    if todo:
        with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
            reasons = pool.map(_decode, [path for _, path, _ in todo], chunksize=64)
            for (key, _, stamp), reason in zip(todo, reasons):
                entries[key] = [*stamp, reason]
    bad = {path: entries[_relative(path, root)][2] for path in files}
    return {path: reason for path, reason in bad.items() if reason}, entries


def load_checks(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def save_checks(path: Path, entries: dict) -> None:
    atomic.write_text(path, json.dumps(entries))


_KINDS = "jpg, jpeg, png, bmp, gif"
UNLABELLED = ""  # the class key of a test folder of images without class folders


def scan_folders(root: Path, spec: Data, layout: str) -> dict[str, dict[str, list[Path]]]:
    """{folder relative to root ("" for root itself): {class: image files}}."""
    if layout == "folders":
        groups = {"": class_folders(root)}
    else:
        groups = {spec.train: class_folders(root / spec.train), spec.val: class_folders(root / spec.val)}
    for where, classes in groups.items():
        require_images(root / where if where else root, classes)
    if layout == "split_folders":
        train, val = groups[spec.train], groups[spec.val]
        for name in sorted(set(train) ^ set(val)):
            has, lacks = (spec.train, spec.val) if name in train else (spec.val, spec.train)
            raise DataError(
                f"class {name!r} has a folder in {root / has} but not in {root / lacks}; every "
                f"class needs images in both splits (add {lacks}/{name}/ or remove {has}/{name}/)."
            )
        if spec.test and (root / spec.test).is_dir():
            test = {n: fs for n, fs in class_folders(root / spec.test).items() if fs}
            loose = image_files(root / spec.test, recursive=False)
            if test and set(test) <= set(train) and not loose:
                groups[spec.test] = test
            elif test and set(test) & set(train):
                raise DataError(
                    f"{root / spec.test} mixes class folders ({', '.join(sorted(set(test) & set(train)))}) "
                    f"with others ({', '.join(sorted(set(test) - set(train)) or ['loose images'])}); "
                    f"use the training classes' names only, or a flat folder of unlabelled images."
                )
            elif test or loose:
                groups[spec.test] = {UNLABELLED: image_files(root / spec.test)}
    return groups


def require_images(folder: Path, classes: dict[str, list[Path]], bad: dict | None = None) -> None:
    """Raise DataError unless every class folder holds at least one (readable) image."""
    if not classes:
        loose = image_files(folder, recursive=False)
        if loose:
            raise DataError(
                f"{folder} holds {len(loose)} images but no class folders; move each class's "
                f"images into {folder}/<class>/."
            )
        raise DataError(
            f"no images ({_KINDS}) found under {folder}; expected {folder}/<class>/<image>. "
            f"Check --data PATH."
        )
    empty = [name for name, files in classes.items() if not files]
    if not empty:
        return
    shown = ", ".join(str(folder / name) for name in empty[:3])
    if bad:
        example = next((f"{p.name}: {r}" for p, r in bad.items() if p.parent.name in empty), "")
        raise DataError(
            f"every image in class folder(s) {shown} is unreadable (e.g. {example}); "
            f"replace the files or remove the folder."
        )
    raise DataError(
        f"class folder(s) {shown} hold no images ({_KINDS}); add images or remove the folder."
    )
