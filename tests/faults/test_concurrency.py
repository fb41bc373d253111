"""Several processes on one runs folder at the same instant: workers of a study share it, a
Keras Tuner search owns it, promotions take turns, and exactly one promotes a shared study."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY
from faults.checks import check_champion, check_mlflow, check_optuna, finished_records
from mlflow import MlflowClient
from optuna.trial import TrialState

from search import run
from search.engine.optuna_storage import open_storage
from search.runs.layout import SpaceDir
from search.runs.locks import FolderLock


def command(runs: Path, data: Path, max_trials: int, *args: str) -> list[str]:
    return [str(TINY), "--data", str(data), "--max-trials", str(max_trials), "--runs-dir", str(runs), "--quiet",
            *args]


def test_a_second_keras_tuner_search_on_a_folder_in_use_is_refused_saying_by_whom(tmp_path, digits_folders, capsys):
    folder = SpaceDir(tmp_path / "tiny")
    with FolderLock(folder.search_lock, doing="search.run tests/spaces/tiny.py (random)"):
        assert run.main(command(tmp_path, digits_folders, 2, "--no-tracking")) == 2
    err = capsys.readouterr().err
    assert "is in use by search.run tests/spaces/tiny.py (random) (pid" in err and "since" in err
    assert "Keras Tuner algorithms run one process per runs folder" in err and err.count("\n") == 1
    assert not folder.trials.exists()  # nothing written, nothing trained
    assert run.main(command(tmp_path, digits_folders, 1, "--no-tracking")) == 0  # the lock is free again


def test_two_processes_on_one_folder_one_waits_for_nothing_and_is_told(zygote, tmp_path, digits_folders):
    slow = tmp_path / "slow.py"  # trials that last long enough for the second process to arrive
    slow.write_text(TINY.read_text() + "\n\ndef callbacks(hp):\n    import time, keras\n"
                    "    return [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(1.5))]\n")
    first = zygote.start("run", str(slow), "--data", str(digits_folders), "--max-trials", "2", "--runs-dir",
                         str(tmp_path), "--quiet", "--no-tracking", "--no-ensemble")
    holders = tmp_path / "slow" / ".search.lock.holders"
    deadline = time.monotonic() + 60
    while not (holders.is_dir() and list(holders.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = zygote.run("run", str(slow), "--data", str(digits_folders), "--max-trials", "2", "--runs-dir",
                        str(tmp_path), "--quiet", "--no-tracking", "--no-ensemble")
    assert second.code == 2 and "is in use by search.run" in second.output
    assert first.result(timeout=120).code == 0
    assert len(finished_records(SpaceDir(tmp_path / "slow"))) == 2


def test_three_workers_started_at_once_on_a_fresh_store_share_one_study_and_promote_once(
        zygote, tmp_path, digits_folders):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # a fresh file: the three race to create its tables
    args = command(tmp_path / "runs", digits_folders, 6, "--algorithm", "tpe")
    jobs = [zygote.start("run", *args, env={"MLFLOW_TRACKING_URI": uri}) for _ in range(3)]
    ended = [job.result(timeout=300) for job in jobs]
    outputs = "\n=====\n".join(e.output[-2500:] for e in ended)
    assert [e.code for e in ended] == [0, 0, 0], outputs
    print(outputs)  # shown if a check below fails
    folder = SpaceDir(tmp_path / "runs" / "tiny")
    check_optuna(folder, 6)
    check_champion(folder)
    check_mlflow(uri, set(finished_records(folder)))
    promoted = [e for e in ended if "Champion: " in e.output]
    told = [e for e in ended if "its champion (python -m search.ensemble" in e.output]
    assert len(promoted) == 1 and len(told) == 2
    client = MlflowClient(uri)
    assert len(client.search_model_versions("name='tiny-classifier'")) == 1
    workers = {json.loads(r.data.tags["worker"])["pid"] for r in client.search_runs(
        [client.get_experiment_by_name("transfer-search/tiny").experiment_id], "tags.trial_id != ''")}
    assert len(workers) == 3  # all three did trials


def test_three_promotions_at_once_take_turns_and_register_one_version(zygote, tmp_path, digits_folders):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert zygote.run("run", *command(tmp_path, digits_folders, 3, "--no-ensemble"),
                      env={"MLFLOW_TRACKING_URI": uri}).code == 0
    jobs = [zygote.start("ensemble", "tiny", "--runs-dir", str(tmp_path), env={"MLFLOW_TRACKING_URI": uri})
            for _ in range(3)]
    ended = [job.result(timeout=300) for job in jobs]
    assert [e.code for e in ended] == [0, 0, 0], "\n=====\n".join(e.output[-2500:] for e in ended)
    assert sum("The champion is unchanged" in e.output for e in ended) == 2
    check_champion(SpaceDir(tmp_path / "tiny"))
    versions = MlflowClient(uri).search_model_versions("name='tiny-classifier'")
    assert len(versions) == 1
    assert MlflowClient(uri).get_model_version_by_alias("tiny-classifier", "champion").version == versions[0].version


@pytest.mark.parametrize("victims", [1])
def test_a_worker_killed_mid_trial_is_replaced_and_its_trial_run_again_with_its_values(
        zygote, tmp_path, digits_folders, victims):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = command(tmp_path / "runs", digits_folders, 6, "--algorithm", "tpe")
    victim = zygote.start("run", *args, env={"MLFLOW_TRACKING_URI": uri, "SEARCH_FAULT": "point:epoch-end@1"})
    others = [zygote.start("run", *args, env={"MLFLOW_TRACKING_URI": uri}) for _ in range(2)]
    assert victim.result(timeout=300).code == -9
    ended = [job.result(timeout=300) for job in others]
    assert [e.code for e in ended] == [0, 0], "\n=====\n".join(e.output[-2500:] for e in ended)
    folder = SpaceDir(tmp_path / "runs" / "tiny")
    check_optuna(folder, 6)
    check_mlflow(uri, set(finished_records(folder)))
    study = optuna.load_study(study_name="tiny", storage=open_storage(None, folder.path))
    (killed,) = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    (retry,) = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
