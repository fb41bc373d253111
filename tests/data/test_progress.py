"""Progress lines when stderr is not a terminal (a CI log, a file, a notebook): each count said once."""

from __future__ import annotations

import itertools
import re
import types

from search import console
from search.data import folders


def test_a_late_start_line_is_not_followed_by_the_quarters_it_already_passed(digits_root, tmp_path, monkeypatch,
                                                                            capsys):
    files = folders.image_files(digits_root)
    assert len(files) == 1797
    # A clock that reaches QUIET_SECONDS at the 1280th image, as a slow first look at a large folder does.
    ticks = itertools.count()
    monkeypatch.setattr(console, "time", types.SimpleNamespace(monotonic=lambda: next(ticks) * 2.0 / 1279))
    folders.check_images(files, digits_root, {}, max_pixels=None, converted=tmp_path / "c")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("checking images")]
    counts = [re.match(r"checking images: (\d+)", line).group(1) for line in lines]
    assert len(counts) == len(set(counts)), lines
    assert lines[0] == "checking images: 1280 of 1797 images ..."
    assert lines[1] == "checking images: 1348 of 1797 images (2 s)"  # the third quarter, once
    assert lines[-1].startswith("checking images: 1797 images in ") and len(lines) == 3


def test_items_counting_for_several_units_say_each_quarter_once(monkeypatch, capsys):
    monkeypatch.setattr(console, "QUIET_SECONDS", 0.0)
    assert list(console.progress([40, 40, 20], "reading", total=100, unit="record", size=lambda n: n)) == [40, 40, 20]
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["reading: 40 of 100 records ...", "reading: 80 of 100 records (0 s)"]
    assert lines[2].startswith("reading: 100 records in ") and len(lines) == 3
