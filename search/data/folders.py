"""Image files on disk: finding them in class folders, checking the folders make a dataset,
and checking once that every file decodes.

The check result is kept in runs/.data/checks/<hash of the root>.json, keyed by each file's
path, size and mtime, so reopening a dataset does not decode it again. A file is left out,
with its reason, when its name is not UTF-8 (TensorFlow, JSON and CSV all need text), when
its header declares more pixels than Data(max_pixels) (read before anything decodes it), or
when it does not decode; an image in a format only Pillow reads is converted to PNG once
(`search.data.formats`) and that PNG is read in its place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from search.console import progress
from search.data import formats
from search.data.formats import IMAGE_SUFFIXES
from search.declare import Data
from search.errors import DataError
from search.runs import atomic
from search.runs.layout import RunsDir

if TYPE_CHECKING:
    import tensorflow as tf

# Images of more pixels than this are decoded one at a time: a pool of threads each holding
# one would take gigabytes (a 100-megapixel image decodes to 300 MB).
LARGE_PIXELS = 4096 * 4096
_one_large_at_a_time = threading.Lock()


def has_text_name(path: Path | str) -> bool:
    """False for a name that is not valid UTF-8 (os.walk gives it with surrogate escapes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: Path | str) -> str:
    """A name as readable text, bytes that are not UTF-8 written as \\xNN: safe in CSV and JSON."""
    return os.fsencode(str(name)).decode("utf-8", "backslashreplace")


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
    for d in subdirs:
        if not has_text_name(d.name):
            raise DataError(
                f"class folder {shown(d)} has a name that is not valid UTF-8; a class name must be text: "
                f"rename the folder (e.g. with `convmv -f latin1 -t utf8`)."
            )
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


def decode_failure(error: tf.errors.OpError) -> str:
    # TF prefixes "{{function_node ...}}" and suffixes " [Op:DecodeImage]": keep the middle.
    message = re.sub(r"\{\{.*?\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message).strip() or type(error).__name__


def _decode(path: Path) -> str | None:
    import tensorflow as tf  # noqa: PLC0415 - the layout checks run before TensorFlow is imported

    try:
        tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        return decode_failure(e)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    return None


def over_limit(width: int, height: int, max_pixels: int | None) -> str | None:
    """The reason an image of this size is left out, or None when it is within the limit."""
    if max_pixels is None or width * height <= max_pixels:
        return None
    return (f"{width}x{height} pixels ({width * height / 1e6:.0f} megapixels), over the limit of "
            f"{max_pixels / 1e6:g} megapixels: shrink it, or raise Data(max_pixels=...)")


@dataclasses.dataclass
class Checked:
    """The outcome of checking a list of image files."""

    bad: dict[Path, str]  # left out: the reason
    entries: dict  # what to keep in the checks file
    substitutes: dict[Path, Path]  # an image only Pillow reads -> the PNG read in its place


# A check entry: [size, mtime_ns, decode failure or None, width, height, converted PNG or None].
_ENTRY = 6


def _check(path: Path, stamp: list[int], max_pixels: int | None, converted: Path) -> tuple[list | None, str | None]:
    """(the entry to keep, None), or (None, why its header alone refuses it)."""
    head = formats.header(path)
    refused = over_limit(head.width, head.height, max_pixels)
    if refused:
        return None, refused
    with _one_large_at_a_time if head.pixels > LARGE_PIXELS else contextlib.nullcontext():
        if head.converted:
            name = formats.converted_name(path, *stamp)
            # Named by the file's path, size and mtime, and written atomically: one there is this file's.
            reason = None if (converted / name).is_file() else formats.convert(path, converted / name)
            return [*stamp, reason, head.width, head.height, None if reason else name], None
        if head.format is None and path.suffix.lower() in formats.CONVERTED_SUFFIXES:
            reason = f"Pillow cannot read it ({head.error})"  # TensorFlow would only say "Unknown image file format"
        else:
            reason = _decode(path)
    return [*stamp, reason, head.width, head.height, None], None


def check_images(
    files: list[Path], root: Path, known: dict, *, max_pixels: int | None, converted: Path
) -> Checked:
    """Check each file not already in `known` (its header, then a decode, or a conversion to PNG
    under `converted`); a file of more than `max_pixels` is refused by its header, never decoded."""
    entries: dict[str, list] = {}
    bad: dict[Path, str] = {}
    todo: list[tuple[str, Path, list[int]]] = []
    keys: dict[Path, str] = {}
    for path in files:
        if not has_text_name(path):
            bad[path] = "its name is not valid UTF-8: rename it"
            continue
        try:
            stat = path.stat()
        except OSError as e:
            bad[path] = f"cannot read: {e.strerror or e}"
            continue
        key = keys[path] = _relative(path, root)
        stamp = [stat.st_size, stat.st_mtime_ns]
        cached = known.get(key)
        if (isinstance(cached, list) and len(cached) == _ENTRY and cached[:2] == stamp
                and (cached[5] is None or (converted / cached[5]).is_file())):
            entries[key] = cached
        else:
            todo.append((key, path, stamp))
    if todo:
        with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
            results = zip(todo, pool.map(lambda job: _check(job[1], job[2], max_pixels, converted), todo))
            for (key, path, _), (entry, refused) in progress(results, "checking images", total=len(todo), unit="image"):
                if entry is None:
                    bad[path] = refused or "refused by its header"
                else:
                    entries[key] = entry
    substitutes: dict[Path, Path] = {}
    for path, key in keys.items():
        if key not in entries:
            continue
        _, _, reason, width, height, png = entries[key]
        reason = reason or over_limit(width, height, max_pixels)
        if reason:
            bad[path] = reason
        elif png:
            substitutes[path] = converted / png
    return Checked(bad, entries, substitutes)


def converted_folder(runs_dir: Path) -> Path:
    """Where images only Pillow reads are kept as PNG: runs/.data/converted/."""
    return RunsDir(runs_dir).extracted / "converted"


def load_checks(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def save_checks(path: Path, entries: dict) -> None:
    atomic.write_text(path, json.dumps(entries))


_KINDS = formats.kinds()
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


def require_classes(where: Path | str, class_names: list[str]) -> None:
    """Raise DataError unless the data has at least two classes: a classifier of one learns nothing."""
    if len(class_names) < 2:
        which = f"one class ({class_names[0]!r})" if class_names else "no class"
        raise DataError(
            f"{where} holds {which}; a classifier needs at least 2: add a folder of images for each class "
            f"({where}/<class>/<image>)."
        )
