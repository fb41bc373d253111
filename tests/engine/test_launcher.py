"""`python -m search.run SPACE --workers N`: N workers of one study on one machine."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import DIGITS, REPO, TINY, cli, without_tensorflow

from search import run
from search.engine import launcher
from search.errors import SearchError

DIES = REPO / "tests" / "spaces" / "one_worker_dies.py"


def _study(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage).trials


def _workers_of(runs: Path) -> list[int]:
    """The workers (not the launcher) still running on `runs`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and str(runs).encode() in command and b"--workers" not in command:
            found.append(int(entry.name))
    return found


def test_three_workers_share_one_study_and_promote_one_champion_from_all(tmp_path, digits_folders):
    done = cli("run", str(TINY), "--data", str(digits_folders), "--algorithm", "tpe", "--max-trials", "9",
               "--runs-dir", str(tmp_path), "--quiet", "--no-tracking", "--workers", "3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("Starting 3 worker(s) of one study on the CPU") and lines[-1] == "All 3 workers finished."
    assert all(re.match(r"\[w[123]\] ", line) for line in lines[1:-1]), lines
    assert {line[:4] for line in lines[1:-1]} == {"[w1]", "[w2]", "[w3]"}
    trials = _study(tmp_path / "tiny", "tiny")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 9
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    table = pd.read_csv(tmp_path / "tiny" / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 9 and set(table["status"]) == {"COMPLETED"}
    assert table["worker"].nunique() == 3  # every worker ran trials
    # One promotion, by one worker, from the trials of all three.
    assert len(re.findall(r"^\[w\d\] Champion: ", done.stdout, re.M)) == 1
    promoted = json.loads((tmp_path / "tiny" / "ensemble.json").read_text())
    assert promoted["trials"] == sorted(table["trial_id"])
    assert (tmp_path / "tiny" / "champion.keras").is_file()
    print(f"\n{done.stdout.splitlines()[0]}\nworkers: {table['worker'].value_counts().to_dict()}; "
          f"champion from trials {promoted['trials']}")


def test_a_worker_that_dies_makes_the_launcher_exit_non_zero(tmp_path, digits_folders):
    done = cli("run", str(DIES), "--data", str(digits_folders), "--runs-dir", str(tmp_path), "--quiet",
               "--no-tracking", "--no-ensemble", "--workers", "3", env={"ONE_WORKER_DIES": str(tmp_path / "dead")})
    assert done.returncode == 128 + signal.SIGKILL, done.stdout[-2000:] + done.stderr[-2000:]
    failed = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(failed) == 1 and re.fullmatch(r"error: 1 of 3 worker\(s\) failed: w[123] exited 137", failed[0])
    # The other worker finished the study, the dead one's trial run again.
    trials = _study(tmp_path / "one_worker_dies", "one_worker_dies")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6


def test_ctrl_c_to_the_launcher_stops_every_worker(tmp_path, digits_folders):
    runs = tmp_path / "runs"
    process = subprocess.Popen(
        [sys.executable, "-m", "search.run", str(TINY), "--data", str(digits_folders), "--algorithm", "tpe",
         "--max-trials", "500", "--runs-dir", str(runs), "--quiet", "--no-tracking", "--workers", "3"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    seen: set[str] = set()
    output = []
    deadline = time.monotonic() + 240
    assert process.stdout is not None
    try:
        while len(seen) < 3 and time.monotonic() < deadline:  # until every worker is inside a trial
            line = process.stdout.readline()
            output.append(line)
            match = re.match(r"\[(w\d)\] Trial \d+ \(", line)
            if match:
                seen.add(match.group(1))
        assert len(seen) == 3 and len(_workers_of(runs)) == 3, "".join(output)[-3000:]
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:  # the test failed: SIGTERM is passed on to the workers too
            process.terminate()
            process.wait(timeout=120)
    output.append(rest)
    assert process.returncode == 130, "".join(output)[-3000:]  # interrupted, as one search is
    assert _workers_of(runs) == []
    assert "Stopping the workers" in rest and "Traceback" not in rest, rest[-3000:]
    assert len(re.findall(r"^\[w\d\] Search 'tiny' killed after", rest, re.M)) == 3, rest[-3000:]
    assert "Stopped: w1 exited 130, w2 exited 130, w3 exited 130. Re-run the same command to resume." in rest


def test_a_keras_tuner_algorithm_is_refused_in_one_line(tmp_path):
    # digits.py: algorithm="random", no import of Keras (tiny.py's own model imports it)
    done = without_tensorflow(DIGITS, "--runs-dir", tmp_path, "--workers", "2", cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --workers needs an Optuna algorithm (tpe, cmaes, gp, nsga2) to share one study, not 'random': "
        "add --algorithm tpe."]
    assert not (tmp_path / "digits").exists()


def _parsed(*argv: str):
    return run.build_parser().parse_args(list(argv))


def test_the_launchers_checks_read_the_command_line_and_the_space_file(tmp_path):
    space = tmp_path / "space.py"
    space.write_text("from search import Data, Search\nsearch = Search(algorithm='nsga2')\n")
    assert launcher.algorithm_of(_parsed(str(space)), space) == "nsga2"
    assert launcher.algorithm_of(_parsed(str(space), "--set", "algorithm=grid"), space) == "grid"
    assert launcher.algorithm_of(_parsed(str(space), "--algorithm", "tpe", "--set", "algorithm=grid"), space) == "tpe"
    space.write_text("from search import Data, Search\nsearch = Search(max_trials=3)\n")
    assert launcher.algorithm_of(_parsed(str(space)), space) == "random"  # Search's default
    assert launcher.without_workers(["s.py", "--workers", "3", "--max-trials", "4", "--workers=2"]) == [
        "s.py", "--max-trials", "4"]
    for argv, words in ((["s.py", "--fresh"], "--fresh"), ([], "needs a space file"),
                        ([str(tmp_path / "none.py")], "no such space file")):
        with pytest.raises(SearchError, match=words):
            launcher.check(_parsed(*argv, "--workers", "2"))
    with pytest.raises(SearchError, match="1 or more"):
        launcher.check(_parsed(str(space), "--workers", "0"))


# A value for each option of search.run that takes one: a new option without one fails below.
_VALUES = {"--data": "DATA", "--max-trials": "2", "--epochs": "1", "--algorithm": "tpe", "--seed": "3",
           "--time-budget": "2h", "--set": "batch_size=8", "--storage": "STORE", "--study": "s",
           "--runs-dir": "RUNS"}
# Options the launcher refuses (in one line) or that do not start a search.
_NOT_FOR_WORKERS = {"--fresh", "--dry-run", "--list", "--workers", "--help"}


def test_every_search_run_option_passes_through_workers_unchanged(tmp_path):
    space = tmp_path / "space.py"
    space.write_text("from search import Data, Search\nsearch = Search(algorithm='tpe')\n")
    parser = run.build_parser()
    options = [a for a in parser._actions if a.option_strings]
    for action in options:
        flag = action.option_strings[-1]
        if flag in _NOT_FOR_WORKERS:
            continue
        given = [flag] if action.nargs == 0 else [flag, _VALUES[flag]]  # KeyError: give the new option a value
        for argv in ([*given, str(space), "--workers", "2"], [str(space), "--workers", "2", *given],
                     ["--workers=2", *given, str(space)]):
            args = parser.parse_args(argv)
            assert launcher.check(args) == space, argv
            worker = parser.parse_args(launcher.without_workers(argv))
            assert vars(worker) == {**vars(args), "workers": None}, argv
            assert getattr(worker, action.dest) == getattr(args, action.dest) != action.default, argv
    for flag in ("--fresh", "--dry-run"):
        with pytest.raises(SearchError, match=f"cannot be combined with {flag}"):
            launcher.check(parser.parse_args([str(space), flag, "--workers", "2"]))


# In CI, test_every_search_run_option_passes_through_workers_unchanged passes each option written before
# the space to the workers, and test_three_workers_share_one_study_and_promote_one_champion_from_all runs them.
@pytest.mark.slow
def test_a_time_budget_before_the_space_starts_the_workers(tmp_path, digits_folders):
    done = cli("run", "--time-budget", "2h", str(TINY), "--algorithm", "tpe", "--workers", "2", "--max-trials", "2",
               "--data", str(digits_folders), "--runs-dir", str(tmp_path), "--quiet", "--no-tracking", "--no-ensemble")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "All 2 workers finished."
    table = pd.read_csv(tmp_path / "tiny" / "trials.csv", dtype={"trial_id": str})
    assert len(table) == 2 and set(table["status"]) == {"COMPLETED"}


def test_each_worker_gets_its_own_gpu_when_there_are_enough():
    assert launcher.placements(2, ["0", "1", "2"]) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert launcher.placements(2, []) == [{}, {}]
    shared = launcher.placements(3, ["0", "1"])
    assert [p["CUDA_VISIBLE_DEVICES"] for p in shared] == ["0", "1", "0"]
    assert all(p["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for p in shared)
    assert launcher.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert launcher.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert launcher.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
