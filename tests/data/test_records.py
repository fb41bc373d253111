"""TFRecords on real digit images: Kaggle's download in four sizes, every file's schema, files
cut short, and the record counts Kaggle's file names carry."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from search import Data
from search.data import tfrecord
from search.data.dataset import open_data
from search.errors import DataError
from search.space import load_space

from conftest import REPO, digit_images, petals_example, write_records


def test_the_download_folder_reads_the_size_nearest_the_spaces_image_size(petals_download, tmp_path):
    data = open_data(Data(str(petals_download), tfrecord_size=300), runs_dir=tmp_path)
    assert data.root == petals_download / "tfrecords-jpeg-331x331"
    assert (data.count("train"), data.count("val"), data.count("test")) == (20, 10, 5)
    note = "TFRecords in 4 sizes under {} (192, 224, 331, 512): reading tfrecords-jpeg-331x331/, the nearest to image_size 300"
    assert note.format(petals_download) in data.describe()
    # Two as near: the larger, which downscales rather than upscales. No hint: the largest.
    assert open_data(Data(str(petals_download), tfrecord_size=208), runs_dir=tmp_path).root.name == "tfrecords-jpeg-224x224"
    assert open_data(Data(str(petals_download)), runs_dir=tmp_path).root.name == "tfrecords-jpeg-512x512"
    # One size folder, or any folder holding train/ val/ test/: read as it is, no choice to report.
    one = open_data(Data(str(petals_download / "tfrecords-jpeg-192x192"), tfrecord_size=500), runs_dir=tmp_path)
    assert one.root == petals_download / "tfrecords-jpeg-192x192" and one.notes == ()


def test_a_glob_naming_a_size_wins_and_an_absent_size_reads_the_nearest(petals_download, tmp_path):
    named = {split: f"tfrecords-jpeg-224x224/{split}/*.tfrec" for split in ("train", "val", "test")}
    data = open_data(Data(str(petals_download), tfrecord_size=512, **named), runs_dir=tmp_path)
    assert data.root == petals_download and data.notes == ()
    assert {f.parent.parent.name for f in data._splits["train"].files} == {"tfrecords-jpeg-224x224"}
    absent = {split: f"tfrecords-jpeg-384x384/{split}/*.tfrec" for split in ("train", "val", "test")}
    data = open_data(Data(str(petals_download), **absent), runs_dir=tmp_path)
    assert {f.parent.parent.name for f in data._splits["val"].files} == {"tfrecords-jpeg-331x331"}
    assert data.notes == (f"tfrecords-jpeg-384x384/ is not under {petals_download}: reading tfrecords-jpeg-331x331/, "
                          "the nearest size there",)


def test_a_space_asks_for_its_largest_image_size():
    assert load_space(REPO / "spaces" / "flowers.py").data.tfrecord_size == 331
    assert load_space(REPO / "spaces" / "celeb.py").data.tfrecord_size == 256  # image_size 224 or 256
    smoke = load_space(REPO / "spaces" / "flowers.py", smoke=True, sets={"backbone": "Xception"})
    assert smoke.data.tfrecord_size == 71  # Xception's smallest input: Kaggle's 192 folder
    assert load_space(REPO / "spaces" / "flowers.py", sets={"tfrecord_size": "512"}).data.tfrecord_size == 512


@pytest.fixture()
def records(digits_tfrecords, tmp_path) -> Path:
    root = tmp_path / "records"
    shutil.copytree(digits_tfrecords, root)
    return root


def test_every_files_schema_is_checked_and_named(records, tmp_path):
    train = records / "tfrecords-jpeg-16x16" / "train"
    _, _, image = digit_images(per_class=1)[0]
    write_records(train / "02-1.tfrec", [petals_example(image, label=3)])
    with pytest.raises(DataError, match=r"train records in .*02-1.tfrec have features \['image', 'label'\]"):
        open_data(Data(str(records)), runs_dir=tmp_path / "runs")
    write_records(train / "02-1.tfrec", [petals_example(image, id=b"x")])
    with pytest.raises(DataError, match=r"02-1.tfrec carry 'id' \(features \['id', 'image'\]\) where those in "
                                        r".*00-70.tfrec carry 'class'"):
        open_data(Data(str(records)), runs_dir=tmp_path / "runs")


def test_a_record_file_cut_short_is_one_line_naming_it(records, tmp_path):
    cut = records / "tfrecords-jpeg-16x16" / "train" / "01-70.tfrec"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError) as raised:
        open_data(Data(str(records)), runs_dir=tmp_path / "runs")
    message = str(raised.value)
    assert message.startswith(f"TFRecord file {cut} is truncated or corrupt after its first 23 records (truncated record")
    assert message.endswith("download it again, or remove it.") and "\n" not in message


def test_counts_in_file_names_size_the_progress_and_a_wrong_one_warns(records, caplog, capsys, monkeypatch):
    from search import console

    monkeypatch.setattr(console, "QUIET_SECONDS", 0.0)  # every job is "long"; stderr is captured, not a tty
    train = records / "tfrecords-jpeg-16x16" / "train"
    (train / "01-70.tfrec").rename(train / "01-71.tfrec")
    with caplog.at_level(logging.WARNING, logger="search"):
        found = tfrecord.scan(sorted(train.glob("*.tfrec")), "train")
    assert found.counts == [70, 70]
    assert caplog.messages == [f"{train / '01-71.tfrec'}: its name says 71 records, it holds 70; using 70."]
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "reading train records: 70 of 141 records ..."  # sized by the names, counted by the scan
    assert lines[-1].startswith("reading train records: 140 records in ")
