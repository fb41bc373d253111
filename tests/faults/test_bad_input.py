"""A user's data or options that cannot work: each file that cannot be read is skipped and
named, and each mistake that makes the whole search impossible is one line, exit 2, before
anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from conftest import TINY

from search import run
from search.runs.layout import SpaceDir


def search(runs: Path, data: Path, *args: str) -> int:
    return run.main([str(TINY), "--data", str(data), "--max-trials", "1", "--epochs", "1", "--runs-dir", str(runs),
                     "--quiet", "--no-tracking", "--no-ensemble", *args])


def test_images_shorter_than_any_header_are_skipped_and_named(tmp_path, digits_folders):
    data = tmp_path / "data"
    shutil.copytree(digits_folders, data)
    (data / "3" / "empty.png").write_bytes(b"")
    (data / "4" / "three-bytes.png").write_bytes(b"\x89PN")
    (data / "5" / "empty.tif").write_bytes(b"")
    (data / "6" / "short.jpg").write_bytes(b"\xff\xd8")
    assert search(tmp_path / "runs", data) == 0
    skipped = pd.read_csv(SpaceDir(tmp_path / "runs" / "tiny").skipped)
    assert sorted(skipped["file"]) == ["3/empty.png", "4/three-bytes.png", "5/empty.tif", "6/short.jpg"]
    assert skipped["reason"].str.len().min() > 0
