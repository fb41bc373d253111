"""A search killed with SIGKILL at every moment that matters, then resumed, ends as if it had
never been killed: exactly max_trials finished trials, none run twice, no orphan record, no
MLflow run left RUNNING, a champion that loads.

Each chain kills the same search again and again, each time at another point of a trial's
life (search.runs.faults), then lets it finish. A killed process exits with -9 (SIGKILL).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faults.checks import check_champion, check_keras_tuner, check_mlflow, check_optuna, finished_records
from conftest import TINY

from search.runs.layout import SpaceDir

MAX_TRIALS = 4
KILLED = -9

# Points in the order a trial meets them; "@N": the Nth time in that process.
KERAS_TUNER_CHAIN = [
    "point:after-record@2",  # the record written, Keras Tuner not told: told on resume, not run again
    "point:search-run@1",  # the search's MLflow run taken up again, not yet tagged with this process
    "write:oracle.json@3",  # Keras Tuner's own state, mid-write
    "point:model-saved@1",  # the model on disk, no record: the trial runs again
    "write:result.json@1",  # the record itself, mid-write
    "point:epoch-end@1",  # during fit
    "write:trials.csv@1",  # the table, mid-rewrite
    "point:promotion@1",  # the champion chosen, not yet written
    "write:champion.keras@1",  # the champion, mid-write
    "point:promotion-logging@1",  # the champion's MLflow run open, its model not logged
]
OPTUNA_CHAIN = [
    "point:search-run@1",  # the search's MLflow run just created, not yet tagged with this process
    "point:after-record@1",  # recorded, the study not told: its trial is told from the record
    "point:epoch-end@2",  # during fit: the study trial is failed and run again with its values
    "point:reaped@1",  # that trial failed by the next start, which dies before queueing it again
    "point:after-tell@1",  # told, trials.csv and MLflow not updated
    "write:result.json@1",
    "point:promotion@1",
    "point:promotion-logging@1",
]


def _chain(zygote, tmp_path: Path, digits_folders: Path, faults: list[str], *args: str) -> SpaceDir:
    runs = tmp_path / "runs"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    command = [str(TINY), "--data", str(digits_folders), "--max-trials", str(MAX_TRIALS), "--runs-dir", str(runs),
               "--quiet", *args]
    for fault in faults:
        ended = zygote.run("run", *command, env={**env, "SEARCH_FAULT": fault})
        assert ended.code == KILLED, f"{fault} did not kill the search:\n{ended.output[-3000:]}"
    ended = zygote.run("run", *command, env=env)
    assert ended.code == 0, ended.output[-3000:]
    assert "Traceback" not in ended.output
    return SpaceDir(runs / "tiny")


def test_a_keras_tuner_search_killed_at_every_point_resumes_to_exactly_max_trials(zygote, tmp_path, digits_folders):
    folder = _chain(zygote, tmp_path, digits_folders, KERAS_TUNER_CHAIN)
    check_keras_tuner(folder, MAX_TRIALS)
    check_champion(folder)
    check_mlflow(f"sqlite:///{tmp_path}/mlflow.db", set(finished_records(folder)))


def test_an_optuna_search_killed_at_every_point_resumes_to_exactly_max_trials(zygote, tmp_path, digits_folders):
    folder = _chain(zygote, tmp_path, digits_folders, OPTUNA_CHAIN, "--algorithm", "tpe")
    check_optuna(folder, MAX_TRIALS)
    check_champion(folder)
    check_mlflow(f"sqlite:///{tmp_path}/mlflow.db", set(finished_records(folder)))


@pytest.mark.parametrize("fault", ["write:*@1", "write:*@4", "write:*@9"])
def test_a_kill_at_the_nth_write_of_any_file_loses_nothing(zygote, tmp_path, digits_folders, fault):
    folder = _chain(zygote, tmp_path, digits_folders, [fault], "--no-tracking")
    check_keras_tuner(folder, MAX_TRIALS)
    check_champion(folder)
