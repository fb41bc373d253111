"""Every TrialStatus has its word in MLflow, Optuna and trials.csv, each said in one place."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from fakes import result, search_info, trial
from mlflow.entities import RunStatus

from search.core.status import TrialStatus
from search.results import records


@pytest.mark.parametrize("status", list(TrialStatus))
def test_every_status_is_an_mlflow_run_status(status):
    assert RunStatus.from_string(status.mlflow) in (RunStatus.RUNNING, RunStatus.FINISHED, RunStatus.FAILED,
                                                    RunStatus.KILLED)
    assert (status.mlflow == "RUNNING") == (status is TrialStatus.RUNNING)  # the rest end their run


@pytest.mark.parametrize("status", list(TrialStatus))
def test_every_status_is_an_optuna_trial_state(status):
    state = optuna.trial.TrialState[status.optuna]
    assert state.is_finished() == (status is not TrialStatus.RUNNING)


def test_every_status_is_written_to_and_read_back_from_trials_csv(tmp_path):
    search = search_info(tmp_path)
    for number, status in enumerate(TrialStatus, 1):
        info = trial(search, number)
        records.write_record(info, result(info, status=status))
    records.write_trials_csv(search.space_dir)
    written = pd.read_csv(search.space_dir / "trials.csv", dtype={"trial_id": str})
    assert list(written["status"]) == [s.csv for s in TrialStatus]
    assert [TrialStatus(s) for s in written["status"]] == list(TrialStatus)
