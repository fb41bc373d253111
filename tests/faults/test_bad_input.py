"""A user's data or options that cannot work: each file that cannot be read is skipped and
named, and each mistake that makes the whole search impossible is one line, exit 2, before
anything is written."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import DIGITS, TINY, without_tensorflow

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


def one_class(root: Path, digits: Path) -> Path:
    shutil.copytree(digits / "3", root / "three")
    return root


def empty_class(root: Path, digits: Path) -> Path:
    shutil.copytree(digits / "3", root / "three")
    shutil.copytree(digits / "4", root / "four")
    (root / "five").mkdir()
    return root


def typo_in_space(root: Path, digits: Path) -> Path:
    (root.parent / "typo.py").write_text(DIGITS.read_text().replace("max_trials=4", "max_trails=4"))
    return digits


def space_with(old: str, new: str) -> Callable[[Path, Path], Path]:
    """The digits space with one line of its hyperparameters changed, written as typo.py."""
    def write(root: Path, digits: Path) -> Path:
        text = DIGITS.read_text()
        assert old in text
        (root.parent / "typo.py").write_text(text.replace(old, new))
        return digits
    return write


SPACE_MISTAKES = {
    "typo in space": typo_in_space,
    "typo in hyperparameters": space_with('hp.Choice("batch_size"', 'hp.Choise("batch_size"'),
    "name typo in hyperparameters": space_with("hp.Fixed(\"image_size\", 32)", "hp.Fixed(\"image_size\", size)"),
    "unknown backbone": space_with('"MobileNet"]', '"MobileNetV3Smal"]'),
    "impossible range": space_with("hp.Float(\"dropout\", 0.1, 0.3", "hp.Float(\"dropout\", 0.3, 0.1"),
    "value out of range": space_with("[128, 256]", "[128, 0]"),
}


@pytest.mark.parametrize(("case", "space", "says"), [
    ("missing folder", DIGITS, "data path {data} does not exist: pass the dataset's folder or .zip with --data PATH."),
    ("one class", DIGITS, "{data} holds one class ('three'); a classifier needs at least 2: add a folder of images "
                          "for each class ({data}/<class>/<image>)."),
    ("empty class", DIGITS, "class folder(s) {data}/five hold no images ("),
    ("typo in space", "typo.py", "typo.py, line 12: TypeError: Search.__init__() got an unexpected keyword argument 'max_trails'"),
    ("typo in hyperparameters", "typo.py", "typo.py, line 19: AttributeError: 'HyperParameters' object has no attribute "
                                           "'Choise'. Did you mean 'Choice'?"),
    ("name typo in hyperparameters", "typo.py", "typo.py, line 18: NameError: name 'size' is not defined"),
    ("unknown backbone", "typo.py", "typo.py: hyperparameter 'backbone': 'MobileNetV3Smal' is not a known backbone."),
    ("impossible range", "typo.py", "typo.py, line 21: For HyperParameters.Float(name='dropout'), min_value 0.3 is "
                                    "greater than the max_value 0.1."),
    ("value out of range", "typo.py", "typo.py: hyperparameter 'head_width': must be in [1, 65536], got 0"),
])
def test_a_mistake_is_one_line_before_tensorflow_is_imported_and_nothing_is_written(
        tmp_path, digits_folders, case, space, says):
    data = {"missing folder": lambda root, _: root / "nowhere", "one class": one_class, "empty class": empty_class,
            **SPACE_MISTAKES}[case](tmp_path / "data", digits_folders)
    runs = tmp_path / "runs"
    done = without_tensorflow(space, "--data", data, "--runs-dir", runs, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("error: ")
    assert says.format(data=data) in done.stderr
    assert not runs.exists()


def test_a_tracking_server_that_does_not_answer_is_one_line_and_nothing_is_written(zygote, tmp_path, digits_folders):
    runs = tmp_path / "runs"
    done = zygote.run("run", TINY, "--data", digits_folders, "--runs-dir", runs, "--quiet",
                      env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})  # nothing listens on the discard port
    assert done.code == 2, done.output[-3000:]
    assert done.stderr.strip() == ("error: the tracking store http://127.0.0.1:9 does not answer ([Errno 111] "
                                   "Connection refused); start it or fix MLFLOW_TRACKING_URI (or mlflow.yaml's "
                                   "tracking_uri), or pass --no-tracking.")
    assert not runs.exists()
