"""Every file a search reads back may be found empty or torn (a full disk, a hand edit, a copy
cut short). Each reader then rebuilds what it can from the per-trial records, or says in one
line which file is damaged and what to do; no finished trial is ever lost or run again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from faults.checks import check_keras_tuner, check_optuna, finished_records

from search import ensemble, report, run
from search.runs.layout import SpaceDir

MAX_TRIALS = 3


def search(runs: Path, data: Path, *args: str, max_trials: int = MAX_TRIALS) -> int:
    return run.main([str(TINY), "--data", str(data), "--max-trials", str(max_trials), "--runs-dir", str(runs),
                     "--quiet", "--no-tracking", *args])


@pytest.fixture
def half_done(tmp_path, digits_folders) -> SpaceDir:
    """A Keras Tuner search with 2 of its 3 trials finished."""
    assert search(tmp_path, digits_folders, max_trials=2, ) == 0
    return SpaceDir(tmp_path / "tiny")


def damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    else:  # torn: the first half of it
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def mtimes(folder: SpaceDir) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.trials.glob("*/model.keras")}


@pytest.mark.parametrize("name", ["tuner/oracle.json", "tuner/tuner0.json", "tuner/trial_0/trial.json"])
@pytest.mark.parametrize("how", ["empty", "torn"])
def test_damaged_keras_tuner_state_is_rebuilt_from_the_records(half_done, tmp_path, digits_folders, name, how, capsys):
    before = mtimes(half_done)
    damage(half_done.path / name, how)
    assert search(tmp_path, digits_folders) == 0
    err = capsys.readouterr().err
    assert "could not be read" in err and "rebuilt it from 2 trial record(s)" in err
    assert {p: t for p, t in mtimes(half_done).items() if p in before} == before  # nothing run again
    check_keras_tuner(half_done, MAX_TRIALS)


@pytest.mark.parametrize("how", ["empty", "torn"])
def test_a_damaged_trial_record_is_named_and_the_others_kept(half_done, tmp_path, digits_folders, how, caplog):
    damage(half_done.trial("1").record, how)
    assert search(tmp_path, digits_folders) == 0
    assert "trials/1/result.json cannot be read" in caplog.text and "Delete the file" in caplog.text
    assert set(finished_records(half_done)) == {"0", "2"}  # trial 1's record is the one lost; none re-run


@pytest.mark.parametrize("name", ["val_labels.npy", "best.json", "search.json", "trials.csv", "ensemble.json"])
def test_other_damaged_files_are_rewritten_on_the_next_start(half_done, tmp_path, digits_folders, name):
    assert (half_done.path / name).exists() or name == "ensemble.json"
    if (half_done.path / name).exists():
        damage(half_done.path / name, "torn")
    assert search(tmp_path, digits_folders) == 0
    check_keras_tuner(half_done, MAX_TRIALS)
    labels = np.load(half_done.val_labels)
    assert labels.shape == (40,)
    assert json.loads(half_done.record.read_text())["seed"] == 0
    assert json.loads(half_done.ensemble_record.read_text())["finished_trials"] == MAX_TRIALS


def test_a_damaged_search_record_is_one_line_for_the_commands_that_read_it(half_done, tmp_path, capsys):
    damage(half_done.record, "empty")
    assert report.main(["tiny", "--runs-dir", str(tmp_path), "--no-mlflow"]) == 2
    assert ensemble.main(["tiny", "--runs-dir", str(tmp_path), "--no-tracking"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all("search.json is damaged" in e and "trials" in e for e in errors)


def test_a_journal_torn_mid_line_resumes(tmp_path, digits_folders):
    assert search(tmp_path, digits_folders, "--algorithm", "tpe", max_trials=2) == 0
    folder = SpaceDir(tmp_path / "tiny")
    with folder.journal.open("ab") as journal:
        journal.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "st')  # a write cut short
    assert search(tmp_path, digits_folders, "--algorithm", "tpe") == 0
    check_optuna(folder, MAX_TRIALS)


@pytest.mark.parametrize("garbage", [np.random.default_rng(5).bytes(20000), b'{"not": "optuna"}\n[1, 2]\n' * 50],
                         ids=["random bytes", "another program's JSON"])
def test_a_journal_of_garbage_is_kept_aside_and_the_study_rebuilt_from_the_records(tmp_path, digits_folders, garbage,
                                                                                   capsys):
    assert search(tmp_path, digits_folders, "--algorithm", "tpe", max_trials=2) == 0
    folder = SpaceDir(tmp_path / "tiny")
    before = mtimes(folder)
    folder.journal.write_bytes(garbage)
    capsys.readouterr()
    assert search(tmp_path, digits_folders, "--algorithm", "tpe") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot be read as an Optuna journal" in err
    assert "did not know 2 trial(s) recorded" in err
    kept = list(folder.path.glob("optuna.journal.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == garbage
    assert {p: t for p, t in mtimes(folder).items() if p in before} == before  # nothing run again
    check_optuna(folder, MAX_TRIALS)


def test_best_model_left_on_a_worse_trial_is_put_right_on_the_next_start(half_done, tmp_path, digits_folders):
    """A full disk or a kill between a trial's record and its copy to best.keras."""
    records = sorted(finished_records(half_done).values(), key=lambda r: r["best"]["val_accuracy"])
    worse, better = records[0], records[-1]
    assert worse["best"]["val_accuracy"] < better["best"]["val_accuracy"]
    half_done.best_model.write_bytes(half_done.trial(worse["trial_id"]).model.read_bytes())
    half_done.best_record.write_text(json.dumps({"trial_id": worse["trial_id"], "score": worse["best"]["val_accuracy"],
                                                 "objective": "val_accuracy"}))
    assert search(tmp_path, digits_folders, max_trials=2) == 0
    assert json.loads(half_done.best_record.read_text())["trial_id"] == better["trial_id"]
    assert half_done.best_model.read_bytes() == half_done.trial(better["trial_id"]).model.read_bytes()


def test_a_resume_with_a_mistyped_option_is_one_line_moves_nothing_and_the_next_runs_no_trial_again(
        half_done, tmp_path, digits_folders, capsys):
    def files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in sorted(half_done.path.rglob("*")) if p.is_file() and "lock" not in p.name}

    before = files()
    recorded = {p: data for p, data in before.items() if p.name == "result.json"}
    capsys.readouterr()
    assert search(tmp_path, digits_folders, "--set", "options={'factr': 3}") == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "'factr'" in errors[0] and "Traceback" not in errors[0]
    assert files() == before  # nothing moved aside, nothing rewritten
    assert search(tmp_path, digits_folders) == 0
    assert {p: p.read_bytes() for p in recorded} == recorded  # no recorded trial ran again
    check_keras_tuner(half_done, MAX_TRIALS)


def test_a_lost_keras_tuner_state_is_rebuilt_from_the_records(half_done, tmp_path, digits_folders, capsys):
    import shutil

    recorded = {p: p.read_bytes() for p in half_done.trials.glob("*/result.json")}
    shutil.rmtree(half_done.tuner)
    assert search(tmp_path, digits_folders) == 0
    assert "did not know 2 trial(s) recorded" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in recorded} == recorded
    check_keras_tuner(half_done, MAX_TRIALS)


def test_a_torn_record_costs_no_row_of_trials_csv(half_done, tmp_path, digits_folders, caplog):
    import pandas as pd

    before = pd.read_csv(half_done.trials_csv, dtype={"trial_id": str})
    assert list(before["trial_id"]) == ["0", "1"]
    record = half_done.trial("0").record
    record.write_bytes(record.read_bytes()[:50])
    assert search(tmp_path, digits_folders) == 0
    assert "trials/0/result.json cannot be read" in caplog.text
    after = pd.read_csv(half_done.trials_csv, dtype={"trial_id": str})
    assert list(after["trial_id"]) == ["0", "1", "2"]  # trial 0's row kept from the trials.csv it had
    pd.testing.assert_frame_equal(after.iloc[:2][before.columns], before, check_dtype=False)
    assert record.read_bytes() == record.read_bytes()[:50]  # left as it was, for the user to see


def test_a_search_whose_only_record_is_torn_keeps_its_row_and_header(tmp_path, digits_folders):
    import pandas as pd

    assert search(tmp_path, digits_folders, max_trials=1) == 0
    folder = SpaceDir(tmp_path / "tiny")
    before = pd.read_csv(folder.trials_csv, dtype={"trial_id": str})
    record = folder.trial("0").record
    record.write_bytes(record.read_bytes()[:50])
    assert search(tmp_path, digits_folders, max_trials=1) == 0
    pd.testing.assert_frame_equal(pd.read_csv(folder.trials_csv, dtype={"trial_id": str}), before)


def test_a_lost_optuna_journal_is_rebuilt_from_the_records(tmp_path, digits_folders, capsys):
    import optuna

    assert search(tmp_path, digits_folders, "--algorithm", "tpe", max_trials=2) == 0
    folder = SpaceDir(tmp_path / "tiny")
    recorded = {p: p.read_bytes() for p in folder.trials.glob("*/result.json")}
    assert len(recorded) == 2
    folder.journal.unlink()
    assert search(tmp_path, digits_folders, "--algorithm", "tpe") == 0
    assert "did not know 2 trial(s) recorded" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in recorded} == recorded  # no recorded trial ran again
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder.journal)))
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.user_attrs["kt_trial_id"] for t in trials] == ["0000", "0001", "0002"]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    check_optuna(folder, MAX_TRIALS)
