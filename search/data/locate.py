"""Where a dataset is and how it is laid out, checked without decoding anything.

Nothing here imports TensorFlow, so the command line answers a missing folder, a folder of
one class or an empty class in a second or two: `check_layout` runs before the search
imports anything heavy, and `open_data` (search.data.dataset) uses the same functions.
"""

from __future__ import annotations

import os
from pathlib import Path

from search.data import builtin
from search.data.folders import has_text_name, is_visible, require_classes, require_images, scan_folders, shown
from search.declare import Data
from search.errors import DataError

RECORD_SUFFIXES = (".tfrec", ".tfrecord")


def resolve(path: str, spec: Data) -> Path:
    """The dataset's folder or zip, or DataError saying how to pass it."""
    resolved = Path(os.path.expanduser(path))
    resolved = resolved if resolved.is_absolute() else Path.cwd() / resolved
    if not has_text_name(resolved):
        raise DataError(f"data path {shown(resolved)} is not valid UTF-8; rename it (or pass a link to it with a text name).")
    if not resolved.exists():
        how = "pass the dataset's folder or .zip with --data PATH"
        if spec.hint:  # where to get the data; it may already say how to pass it
            how = spec.hint.rstrip(".") if "--data" in spec.hint else f"{spec.hint.rstrip('.')}, then {how}"
        raise DataError(f"data path {resolved} does not exist: {how}.")
    if resolved.is_file() and resolved.suffix.lower() != ".zip":
        raise DataError(
            f"data path {resolved} is a file; pass a folder of images, a .zip of one, or a folder "
            f"of TFRecords with --data PATH."
        )
    return resolved.resolve()


def has_records(root: Path, depth: int = 4) -> bool:
    """Whether any *.tfrec(ord) file lies within `depth` levels under root."""
    level = [root]
    for _ in range(depth):
        next_level = []
        for folder in level:
            for entry in folder.iterdir():
                if entry.is_file() and entry.suffix.lower() in RECORD_SUFFIXES:
                    return True
                if entry.is_dir() and not entry.name.startswith((".", "__")):
                    next_level.append(entry)
        level = next_level
    return False


def _find_split_root(root: Path, spec: Data, depth: int = 3) -> Path | None:
    """The first folder (breadth first, `depth` levels down) holding both train/ and val/."""
    level = [root]
    for _ in range(depth + 1):
        for folder in level:
            if (folder / spec.train).is_dir() and (folder / spec.val).is_dir():
                return folder
        level = [d for f in level for d in sorted(f.iterdir()) if d.is_dir() and is_visible(d)]
    return None


def detect(root: Path, spec: Data) -> tuple[str, Path]:
    """The layout ("folders", "split_folders" or "tfrecord") and the folder it starts at."""
    layout = spec.layout
    if layout == "auto" and has_records(root):
        return "tfrecord", root
    if layout == "tfrecord":
        return layout, root
    if layout in ("auto", "split_folders"):
        found = _find_split_root(root, spec)
        if found is not None:
            return "split_folders", found
        if layout == "split_folders" or (root / spec.train).is_dir():
            raise DataError(
                f"no folder under {root} holds both {spec.train}/ and {spec.val}/ (looked 3 levels "
                f"down). Add {spec.val}/<class>/ images, or use Data(layout='folders') on a folder of "
                f"class folders to split it by val_fraction."
            )
    return "folders", root


def check_layout(spec: Data, path: str | None = None) -> None:
    """DataError when the data cannot make a dataset whatever its images hold: no such path, no
    class folders, an empty class, fewer than two classes. A zip, a builtin set and TFRecords are
    checked when opened (they need extracting or reading)."""
    path = path or spec.path
    if not path:
        raise DataError("no dataset given: set Data(path=...) in the space file or pass --data PATH "
                        "(try --data builtin:digits).")
    if builtin.is_builtin(path):
        return
    root = resolve(path, spec)
    if root.is_file():
        return
    layout, root = detect(root, spec)
    if layout == "tfrecord":
        return
    groups = scan_folders(root, spec, layout)
    for where, classes in groups.items():
        if where != spec.test:
            require_images(root / where if where else root, classes)
            require_classes(root / where if where else root, list(classes))
