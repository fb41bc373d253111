"""A runs folder on a disk that fills up mid-search (a small tmpfs): the search stops with one
line naming the folder and the room needed, its MLflow runs end KILLED, and once there is
room the same command resumes and finishes without losing or re-running a finished trial."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TINY
from faults.checks import check_keras_tuner, check_mlflow, finished_records
from mlflow import MlflowClient

from search.runs.layout import SpaceDir

MAX_TRIALS = 8


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 4 MB tmpfs; `remount(size)` gives it more room."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_is_one_line_and_the_resume_loses_nothing(zygote, small_disk, tmp_path, digits_folders):
    store = f"sqlite:///{tmp_path}/mlflow.db"  # off the full disk: the runs' end can be written
    runs = small_disk / "runs"
    command = [TINY, "--data", digits_folders, "--max-trials", str(MAX_TRIALS), "--runs-dir", runs, "--quiet"]
    full = zygote.run("run", *command, env={"MLFLOW_TRACKING_URI": store})
    assert full.code == 2, full.output[-3000:]
    assert "Traceback" not in full.output, full.output[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: the disk holding {runs / 'tiny'} is full ("), full.stderr
    assert "a trial there needs about " in errors[0] and "run the same command again to resume" in errors[0]
    folder = SpaceDir(runs / "tiny")
    done_before = finished_records(folder)
    assert 0 < len(done_before) < MAX_TRIALS

    client = MlflowClient(store)
    runs_logged = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r.info.run_name for r in runs_logged if r.info.status == "RUNNING"]
    assert "KILLED" in {r.info.status for r in runs_logged if not r.data.tags.get("trial_id")}  # the search's run

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    models = {p: p.stat().st_mtime_ns for p in folder.trials.glob("*/model.keras")}
    resumed = zygote.run("run", *command, env={"MLFLOW_TRACKING_URI": store})
    assert resumed.code == 0, resumed.output[-3000:]
    check_keras_tuner(folder, MAX_TRIALS)
    for trial_id in done_before:  # finished before the disk filled: kept, not trained again
        model = folder.trial(trial_id).model
        assert not model.exists() or models.get(model) == model.stat().st_mtime_ns
    records = finished_records(folder).values()
    top = max(records, key=lambda r: r["best"]["val_accuracy"])["best"]["val_accuracy"]
    assert json.loads(folder.best_record.read_text())["score"] == top
    check_mlflow(store, set(finished_records(folder)))
