"""A search killed with SIGKILL at 10 random moments, then resumed, ends with exactly max_trials
distinct finished trials, none run twice, no MLflow run left RUNNING."""

from __future__ import annotations

import random
import signal
import time

import pytest
from conftest import TINY
from faults.checks import check_champion, check_keras_tuner, check_mlflow, check_optuna, finished_records

from search.runs.layout import SpaceDir

KILLS = 10
MAX_TRIALS = 8


@pytest.mark.slow  # in CI, test_crashes kills Keras Tuner and Optuna searches at every point
@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_ten_random_kills_then_a_resume_end_with_exactly_max_trials(zygote, tmp_path, digits_folders, algorithm):
    rng = random.Random(algorithm)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [str(TINY), "--data", str(digits_folders), "--max-trials", str(MAX_TRIALS), "--runs-dir", str(tmp_path),
            "--quiet", "--algorithm", algorithm, "--set", "epochs=6", "--set", "steps_per_epoch=12"]
    moments = []
    for _ in range(KILLS):
        job = zygote.start("run", *args, env={"MLFLOW_TRACKING_URI": uri})
        job.pid()
        delay = rng.uniform(0.5, 6.0)  # the fork has the imports done: trials start within a second
        time.sleep(delay)
        job.kill(signal.SIGKILL)
        moments.append((round(delay, 2), job.result(timeout=120).code))
    ended = zygote.run("run", *args, env={"MLFLOW_TRACKING_URI": uri})
    assert ended.code == 0, ended.output[-3000:]
    folder = SpaceDir(tmp_path / "tiny")
    print(f"{algorithm}: killed at {moments}; {len(finished_records(folder))} finished trials")
    (check_keras_tuner if algorithm == "random" else check_optuna)(folder, MAX_TRIALS)
    check_champion(folder)
    check_mlflow(uri, set(finished_records(folder)))
    assert sum(code == -9 for _, code in moments) >= KILLS // 2  # most kills landed in a live search
