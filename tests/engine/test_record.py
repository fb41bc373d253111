"""result.json: one writer and one reader, with the layout's version; older records still read."""

from __future__ import annotations

import json

import pytest
from fakes import result, search_info, trial

from search.core.record import SCHEMA, from_json, to_json
from search.core.status import COMPLETED
from search.results import records
from search.runs.layout import TrialDir

# A record as searches wrote it before its layout had a version.
VERSION_1 = {
    "trial_id": "03", "number": 4, "worker": "host:123", "status": "COMPLETED", "values": {"units": 16},
    "config": {"backbone": "MobileNet", "dropout": 0.2}, "model": "build_model",
    "best": {"val_accuracy": 0.5, "val_loss": None}, "epochs_run": 2, "seconds": 1.5, "seconds_per_epoch": 0.75,
    "images_per_second": 40.0, "params": 1000, "size_mb": 0.1, "model_path": "/r/trials/03/model.keras",
    "val_probabilities_path": "/r/trials/03/val_probabilities.npy", "error": None, "note": None,
    "history": {"loss": [1.0, None]},
}


def test_a_record_written_before_versions_reads_as_it_was(tmp_path):
    record = from_json(VERSION_1)
    assert record.schema == 1 and record.status is COMPLETED
    assert to_json(record) == {**VERSION_1, "schema": 1}
    folder = tmp_path / "03"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps(VERSION_1))
    assert records.read_record(TrialDir(folder)) == {**VERSION_1, "schema": 1}


def test_a_written_record_reads_back_and_says_its_version(tmp_path):
    search = search_info(tmp_path)
    info = trial(search, 1)
    records.write_record(info, result(info))
    written = json.loads((info.dir / "result.json").read_text())
    assert written["schema"] == SCHEMA
    assert to_json(from_json(written)) == written


@pytest.mark.parametrize("damage", [{"schema": SCHEMA + 1}, {"status": "DONE"}, {"trial_id": None, "status": None}])
def test_a_record_this_version_cannot_read_is_named_not_guessed(tmp_path, damage, caplog):
    folder = tmp_path / "03"
    folder.mkdir()
    data = {**VERSION_1, **damage}
    (folder / "result.json").write_text(json.dumps(data))
    assert records.read_record(TrialDir(folder)) is None
    assert "result.json cannot be read" in caplog.text
