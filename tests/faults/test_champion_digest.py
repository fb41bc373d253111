"""A champion.keras cut short (a full disk, a copy interrupted): ensemble.json keeps its sha256,
so the resume promotes it again from the trial records and `predict` says so in one line."""

from __future__ import annotations

import json

import keras
from conftest import TINY

from search import predict, run
from search.ensembles import champion as champions
from search.runs.layout import SpaceDir


def test_a_truncated_champion_is_promoted_again_on_resume_and_refused_by_predict(tmp_path, digits_folders, capsys):
    args = [str(TINY), "--data", str(digits_folders), "--max-trials", "2", "--runs-dir", str(tmp_path), "--quiet",
            "--no-tracking"]
    assert run.main(args) == 0
    folder = SpaceDir(tmp_path / "tiny")
    promoted = json.loads(folder.ensemble_record.read_text())["promoted"]
    assert champions.digest(folder.champion) == promoted["sha256"]
    whole = folder.champion.read_bytes()

    folder.champion.write_bytes(whole[:1000])
    capsys.readouterr()
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert "does not match the sha256 kept in ensemble.json" in out and "promoting again" in out
    assert "The champion is unchanged" not in out
    assert champions.digest(folder.champion) == json.loads(folder.ensemble_record.read_text())["promoted"]["sha256"]
    keras.models.load_model(folder.champion, compile=False)

    folder.champion.write_bytes(whole[:1000])
    out_csv = tmp_path / "predictions.csv"
    assert predict.main(["tiny", "--runs-dir", str(tmp_path), "--images", str(digits_folders / "3"),
                         "--out", str(out_csv)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "champion.keras does not match the sha256" in errors[0] and "python -m search.ensemble tiny" in errors[0]
    assert not out_csv.exists()
