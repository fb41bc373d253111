"""A search end to end: its files, resume, failures, and the user's mistakes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DIGITS, TINY, cli

from search import run
from search.engine import interrupts, runner
from search.core.status import COMPLETED, FAILED, KILLED
from search.errors import SearchError
from search.models import build
from search.runs.layout import SpaceDir
from search.space import load_space


def tiny(digits_folders: Path, **kwargs):
    return load_space(TINY, data_path=str(digits_folders), **kwargs)


# The shared real search (conftest.searched) ------------------------------------------------
def test_a_smoke_search_writes_trials_csv_and_the_best_model(searched):
    assert searched.code == 0, searched.output[-3000:]
    table = pd.read_csv(searched.space_dir / "trials.csv")
    assert (table["status"] == COMPLETED).sum() == 3
    for column in ("backbone", "dropout", "learning_rate", "val_accuracy", "val_f1", "val_loss", "epochs_run",
                   "seconds", "params", "size_mb"):
        assert column in table, column
    assert (table["params"] > 0).all() and (table["size_mb"] > 0).all()
    assert (searched.space_dir / "best.keras").is_file()
    assert "Leaderboard" in searched.output and "Trial 2 (2 of 3 done)" in searched.output


def test_each_trial_keeps_its_model_and_val_probabilities(searched):
    labels = np.load(searched.space_dir / "val_labels.npy")
    for record_path in (searched.space_dir / "trials").glob("*/result.json"):
        record = json.loads(record_path.read_text())
        probabilities = np.load(record["val_probabilities_path"])
        assert probabilities.shape == (len(labels), 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
        assert Path(record["model_path"]).is_file()
        assert {"val_accuracy", "val_f1", "val_top5_accuracy", "val_loss"} <= set(record["best"])


def test_rerun_of_a_finished_search_runs_nothing_and_keeps_its_champion(searched, digits_root, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", searched.tracking_uri)
    before = {p: p.stat().st_mtime_ns for p in (searched.space_dir / "trials").glob("*/*")}
    champion = (searched.space_dir / "champion.keras").stat().st_mtime_ns
    assert run.main([str(DIGITS), "--smoke", "--max-trials", "3", "--data", str(digits_root),
                     "--runs-dir", str(searched.runs), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (searched.space_dir / "trials").glob("*/*")} == before
    assert (searched.space_dir / "champion.keras").stat().st_mtime_ns == champion
    assert "The champion is unchanged" in capsys.readouterr().out


@pytest.mark.slow  # three real epochs of MobileNetV2; the demo (make demo) shows the same on every machine
def test_search_learns_well_above_chance(tmp_path, digits_root):
    outcome = runner.run_search(
        load_space(DIGITS, max_trials=1, epochs=3, data_path=str(digits_root),
                   sets={"backbone": "MobileNetV2", "batch_size": "32", "learning_rate": "0.002", "optimizer": "adam"}),
        runs_dir=tmp_path, verbose=0, tracking=False,
    )
    assert outcome.status == COMPLETED
    assert outcome.table["val_accuracy"].max() >= 0.5  # chance is 0.1


# Signals -----------------------------------------------------------------------------------
class _SignalInFinaliser:
    """Sends a signal to this process from a finaliser: Python prints the KeyboardInterrupt
    raised there as "Exception ignored" and drops it, as it does inside TensorFlow's."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)
        time.sleep(0.2)  # the handler runs here, inside the finaliser


def _signal_turned_into_another_error(signum: int) -> None:
    """As a library that calls back into Python does: the KeyboardInterrupt comes out a SystemError."""
    try:
        os.kill(os.getpid(), signum)
        time.sleep(0.2)
    except KeyboardInterrupt as e:
        raise SystemError("<built-in function __import__> returned a result with an exception set") from e


@pytest.fixture
def foreground_signals():
    """SIGINT and SIGTERM as a search started in a terminal's foreground finds them, whatever
    this test process inherited (a background job starts with SIGINT ignored); put back after."""
    inherited = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in inherited.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("lost", ["in a finaliser", "as another error"])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the finaliser's, on purpose
def test_a_signal_whose_keyboard_interrupt_is_lost_still_stops_the_search(
        tmp_path, digits_folders, foreground_signals, signum, lost):
    import keras

    # _SignalInFinaliser(signum) is dropped at once: its __del__ runs there.
    send = _SignalInFinaliser if lost == "in a finaliser" else _signal_turned_into_another_error
    space = dataclasses.replace(tiny(digits_folders, max_trials=4), callbacks_fn=lambda hp: [
        keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: send(signum) if epoch == 0 else None)])
    outcome = runner.run_search(space, runs_dir=tmp_path, verbose=0, tracking=False)
    assert outcome.status == KILLED and "re-run the same command to resume" in outcome.message
    assert outcome.table["status"].tolist() == [KILLED]  # the first trial, run again on resume; no other began
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_during_a_trial_stops_it_at_a_batch_end_not_inside_tensorflow(
        tmp_path, digits_folders, foreground_signals, capfd):
    import keras

    raised_at_the_signal = []

    def signal_once(epoch, logs):
        if epoch == 0:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # the handler has run
            except KeyboardInterrupt:  # where TensorFlow code would have been
                raised_at_the_signal.append(True)

    space = dataclasses.replace(tiny(digits_folders, max_trials=3), callbacks_fn=lambda hp: [
        keras.callbacks.LambdaCallback(on_epoch_begin=signal_once)])
    outcome = runner.run_search(space, runs_dir=tmp_path, verbose=0, tracking=False)
    assert raised_at_the_signal == []
    assert outcome.status == KILLED and outcome.table["status"].tolist() == [KILLED]
    interrupts.check()  # handled: nothing left to raise in what this process does next (a refit, another search)
    assert "Stopping at the end of this batch (again to stop at once)." in capfd.readouterr().err


def test_a_second_signal_in_a_trial_stops_it_at_once(foreground_signals):
    restore = interrupts.install()
    try:
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            assert interrupts.received()
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
    finally:
        restore()


def test_a_signal_the_search_was_started_ignoring_stays_ignored(tmp_path, digits_folders, foreground_signals):
    import keras

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `search.run ... &` in a script starts
    space = dataclasses.replace(tiny(digits_folders, max_trials=2), callbacks_fn=lambda hp: [
        keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: os.kill(os.getpid(), signal.SIGINT))])
    outcome = runner.run_search(space, runs_dir=tmp_path, verbose=0, tracking=False)
    assert outcome.status == COMPLETED
    assert outcome.table["status"].tolist() == [COMPLETED, COMPLETED]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


# Failures ----------------------------------------------------------------------------------
def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path, digits_folders, monkeypatch, capsys):
    real_build = build.build_user_model
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated crash in trial one")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(build, "build_user_model", flaky)
    outcome = runner.run_search(tiny(digits_folders, max_trials=2), runs_dir=tmp_path, verbose=0, tracking=False)
    assert outcome.status == COMPLETED and outcome.exit_code == 0
    statuses = outcome.table.sort_values("trial_id")["status"].tolist()
    assert statuses == [FAILED, COMPLETED]
    assert "simulated crash" in outcome.table["error"].iloc[0]
    error = tmp_path / "tiny" / "trials" / str(outcome.table["trial_id"].iloc[0]) / "error.txt"
    assert "Traceback" in error.read_text()
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "error.txt" in failed[0]  # one line and the path, no traceback
    assert "Traceback" not in err


def test_consecutive_failures_stop_the_search_with_a_reason(tmp_path, digits_folders, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(build, "build_user_model", broken)
    outcome = runner.run_search(tiny(digits_folders, max_trials=5), runs_dir=tmp_path, verbose=0, tracking=False)
    assert outcome.status == FAILED and outcome.exit_code == 1
    assert "3 trials in a row failed" in outcome.message and "model exploded" in outcome.message
    assert len(outcome.table) == 3 and (outcome.table["status"] == FAILED).all()


def test_a_search_in_which_every_trial_failed_exits_non_zero_saying_why(tmp_path, digits_folders, monkeypatch,
                                                                         capsys):
    def broken(*args, **kwargs):
        raise ValueError("units must be even")

    monkeypatch.setattr(build, "build_user_model", broken)
    code = run.main([str(TINY), "--data", str(digits_folders), "--max-trials", "2", "--runs-dir", str(tmp_path),
                     "--no-tracking", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "no trial finished: 2 of 2 with: ValueError: units must be even" in err


def test_a_user_model_that_returns_nothing_is_a_failed_trial_with_the_fix(tmp_path, digits_folders):
    space = tmp_path / "bad.py"
    space.write_text(TINY.read_text().replace("    return keras.layers.Dense", "    keras.layers.Dense"))
    outcome = runner.run_search(load_space(space, data_path=str(digits_folders), max_trials=1), runs_dir=tmp_path,
                                verbose=0, tracking=False)
    assert outcome.status == FAILED
    assert "returned None. Did you forget to return the model" in outcome.table["error"].iloc[0]


# The user's mistakes -------------------------------------------------------------------------
def test_user_mistakes_are_one_line_with_the_fix_and_write_nothing(tmp_path, capsys):
    bad_space = tmp_path / "bad.py"
    bad_space.write_text(DIGITS.read_text().replace('"MobileNet"]', '"MobileNett"]'))
    cases = [
        ([str(bad_space)], "Did you mean 'MobileNet'"),
        ([str(DIGITS), "--data", str(tmp_path / "nowhere")], "nowhere"),
        ([str(DIGITS), "--set", "dropout"], "NAME=VALUE"),
        ([str(tmp_path / "nospace.py")], "does not exist"),
        ([str(DIGITS), "--set", "image_size=64.5"], "hyperparameter 'image_size': must be a whole number"),
        ([str(DIGITS), "--set", "objective=val_acuracy"], "Did you mean 'val_accuracy'"),
        ([str(DIGITS), "--storage", "x.journal"], "needs an Optuna algorithm"),
    ]
    for args, expected in cases:
        assert run.main([*args, "--runs-dir", str(tmp_path / "runs")]) == 2, args
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1 and err.startswith("error: "), (args, err)
    assert not (tmp_path / "runs" / "digits").exists()


def test_a_mistake_from_the_command_line_prints_no_traceback(tmp_path):
    done = cli("run", str(DIGITS), "--set", "backbone=MobileNett", "--runs-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Did you mean 'MobileNet'" in done.stderr
    assert "Traceback" not in done.stderr and "absl" not in done.stderr  # nor TensorFlow's start-up noise


def test_an_integral_float_is_taken_as_the_whole_number_it_is():
    space = load_space(DIGITS, smoke=True, sets={"image_size": "64.0", "epochs": "2.0"})
    assert space.fixed["image_size"] == 64 and isinstance(space.fixed["image_size"], int)
    assert space.search.epochs == 2


# Resume and --fresh ------------------------------------------------------------------------
def test_resuming_with_other_data_seed_algorithm_or_study_is_refused(tmp_path):
    space = load_space(DIGITS, smoke=True)
    folder = SpaceDir(tmp_path / "digits")
    runner._write_record(space, folder, {"root": "/data/a", "content_hash": "aaa"})
    runner.check_resume(space, folder, {"root": "/data/a", "content_hash": "aaa"})
    with pytest.raises(SearchError, match="other data"):
        runner.check_resume(space, folder, {"root": "/data/b", "content_hash": "bbb"})
    with pytest.raises(SearchError, match="--seed 0, not 3"):
        runner.check_resume(load_space(DIGITS, smoke=True, seed=3), folder, {"content_hash": "aaa"})
    with pytest.raises(SearchError, match="--algorithm random, not tpe"):
        runner.check_resume(load_space(DIGITS, smoke=True, algorithm="tpe"), folder, {"content_hash": "aaa"})
    tpe = run._with_storage(load_space(DIGITS, smoke=True, algorithm="tpe"), None, "first")
    runner._write_record(tpe, folder, {"content_hash": "aaa"})
    other = run._with_storage(load_space(DIGITS, smoke=True, algorithm="tpe"), None, "second")
    with pytest.raises(SearchError, match="holds the trials of Optuna study 'first', not 'second'"):
        runner.check_resume(other, folder, {"content_hash": "aaa"})


def test_fresh_removes_nothing_until_everything_validates(tmp_path, digits_folders):
    outcome = runner.run_search(tiny(digits_folders, max_trials=2), runs_dir=tmp_path, verbose=0, tracking=False)
    assert outcome.finished == 2
    kept = sorted(p.name for p in (tmp_path / "tiny" / "trials").iterdir())
    assert run.main([str(TINY), "--data", str(digits_folders), "--fresh", "--set", "units=7.5",
                     "--runs-dir", str(tmp_path)]) == 2
    assert sorted(p.name for p in (tmp_path / "tiny" / "trials").iterdir()) == kept
    assert run.main([str(TINY), "--data", str(tmp_path / "missing"), "--fresh", "--runs-dir", str(tmp_path)]) == 2
    assert sorted(p.name for p in (tmp_path / "tiny" / "trials").iterdir()) == kept


def test_fresh_with_a_shared_storage_deletes_that_study_or_refuses_while_a_worker_runs(tmp_path, digits_folders,
                                                                                       capsys):
    import optuna

    from search.engine.optuna_storage import open_storage

    journal = tmp_path / "shared.journal"
    args = [str(TINY), "--data", str(digits_folders), "--algorithm", "tpe", "--storage", str(journal),
            "--max-trials", "1", "--runs-dir", str(tmp_path / "runs"), "--no-tracking", "--no-ensemble", "--quiet"]

    def study() -> optuna.Study:
        return optuna.load_study(study_name="tiny", storage=open_storage(str(journal), tmp_path))

    assert run.main(args) == 0
    elsewhere = study().ask()  # a worker on another machine is running a trial of the study
    capsys.readouterr()
    assert run.main([*args, "--fresh"]) == 2
    err = capsys.readouterr().err
    assert "has 1 running trial(s)" in err and "optuna delete-study --study-name tiny" in err and err.count("\n") == 1
    assert len(study().trials) == 2 and (tmp_path / "runs" / "tiny" / "trials" / "0000" / "result.json").is_file()
    study().tell(elsewhere.number, state=optuna.trial.TrialState.FAIL)  # it ended
    assert run.main([*args, "--fresh"]) == 0
    assert "--fresh: deleting Optuna study 'tiny' (2 trials)" in capsys.readouterr().out
    trials = study().trials
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE")]


def test_a_worker_that_joins_a_study_already_done_ran_nothing_and_that_is_no_failure(tmp_path, digits_folders,
                                                                                    capsys):
    journal = tmp_path / "shared.journal"
    args = [str(TINY), "--data", str(digits_folders), "--algorithm", "tpe", "--storage", str(journal),
            "--max-trials", "1", "--no-tracking", "--no-ensemble", "--quiet"]
    assert run.main([*args, "--runs-dir", str(tmp_path / "machine1")]) == 0
    capsys.readouterr()
    assert run.main([*args, "--runs-dir", str(tmp_path / "machine2")]) == 0  # another machine, come late
    err = capsys.readouterr().err
    assert "study 'tiny' has its 1 finished trials; the other workers ran them." in err and "error" not in err


def test_no_tracking_leaves_mlflow_out(tmp_path, digits_folders, monkeypatch):
    from search.tracking import tracker

    def no_tracking(space):
        raise AssertionError("tracking hooks were asked for with tracking=False")

    monkeypatch.setattr(tracker, "hooks_for", no_tracking)
    runner.run_search(tiny(digits_folders, max_trials=1), runs_dir=tmp_path, verbose=0, tracking=False)
    assert not (tmp_path / "tiny" / "mlflow.json").exists()
    assert run.build_parser().parse_args([str(DIGITS), "--no-tracking"]).no_tracking


def test_no_tracking_reaches_the_ensemble_promoted_after_the_search(tmp_path, monkeypatch):
    from search.ensembles import promote

    promoted = []
    monkeypatch.setattr(runner, "run_search", lambda *a, **k: runner.Outcome(status="COMPLETED", space_dir=tmp_path,
                                                                               table=pd.DataFrame()))
    monkeypatch.setattr(promote, "after_search", lambda outcome, space, runs_dir, *, track: promoted.append(track))
    assert run.main([str(DIGITS), "--runs-dir", str(tmp_path), "--no-tracking"]) == 0
    assert run.main([str(DIGITS), "--runs-dir", str(tmp_path)]) == 0
    assert promoted == [False, True]


def test_search_continues_in_a_fresh_process_after_trials_per_process(zygote, tmp_path, digits_folders):
    done = zygote.run("run", TINY, "--data", digits_folders, "--max-trials", "3", "--set", "trials_per_process=2",
                      "--runs-dir", tmp_path, "--quiet", "--no-ensemble")
    assert done.code == 0, done.stderr[-3000:]
    assert done.stdout.count("continuing in a fresh one") == 1
    assert "Resuming: 2 trial(s) already recorded" in done.stdout
    table = pd.read_csv(tmp_path / "tiny" / "trials.csv")
    assert sorted(table["status"]) == [COMPLETED] * 3
    assert table["trial_id"].is_unique
