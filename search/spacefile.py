"""Running a space file as a module, its mistakes told as the file's own (one line each).

Light on purpose: `search.preflight` runs the file to check its settings before TensorFlow
or Keras Tuner is imported, and `search.space` runs it to load the whole space."""

from __future__ import annotations

import importlib.util
import traceback
from pathlib import Path
from typing import Any

from search.errors import SearchError, SpaceError, did_you_mean


def run_file(path: Path, module_prefix: str) -> Any:
    """The space file at `path` run as a module named `<module_prefix><stem>`; a SpaceError
    naming the file and line for anything that goes wrong."""
    if not path.is_file():
        nearby = [str(p) for p in path.parent.glob("*.py")] if path.parent.is_dir() else []
        raise SpaceError(f"space file '{path}' does not exist.{did_you_mean(str(path), nearby)}")
    spec = importlib.util.spec_from_file_location(f"{module_prefix}{path.stem}", path)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise SpaceError(f"{path}, line {e.lineno}: {e.msg}. Fix the syntax and run again.") from None
    except SearchError as e:
        raise SpaceError(f"{path}, line {line_in(path, e)}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any error while running the user's file is theirs
        raise SpaceError(f"{path}, line {line_in(path, e)}: {type(e).__name__}: {e}") from None
    return module


def line_in(path: Path, error: BaseException) -> int | str:
    """The deepest line of the traceback that lies in the space file itself."""
    line: int | str = "?"
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno or "?"
    return line
