"""Tracking as a projection of the trial records: an MLflow server that goes away mid-search
costs one "tracking lost" line; once it answers again every trial recorded meanwhile is sent,
once, and the runs the outage left RUNNING end with their trial's status."""

from __future__ import annotations

import collections
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import sqlalchemy as sa
from optuna.trial import TrialState

import pytest
from fakes import RecordWriter, result, search_info, trial
from mlflow import MlflowClient

from search.core.hooks import HookList
from search.core.status import COMPLETED, FAILED
from search.runs.layout import SpaceDir
from search.tracking import tracker as tracking
from search.tracking.config import TrackingConfig
from servers.clusters import MlflowServer, running

SLOW = Path(__file__).with_name("slow.py")  # trials of TRIAL_SECONDS, workers posing as machines of their own
OUTAGE = 20.0


@pytest.fixture(scope="module")
def server() -> Iterator[MlflowServer]:
    """An MLflow server of these tests' own (SQLite store): they stop it, no other test may see that."""
    yield from running(MlflowServer(), "MLflow server")


@pytest.mark.slow  # in CI, the three machines' outage below checks the same: every trial sent once, none left RUNNING
def test_trials_recorded_while_the_server_is_down_are_sent_once_it_is_back(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    search = search_info(tmp_path)
    tracker = tracking.MlflowTracker(TrackingConfig(log_models="none", reconnect_seconds=0))
    hooks = HookList([RecordWriter(), tracker])  # each trial's record first, as the tuner writes it
    hooks.on_search_begin(search)

    def run_trial(number: int, status: str = COMPLETED, *, down_at_end: bool = False) -> None:
        info = trial(search, number)
        hooks.on_trial_begin(search, info)
        hooks.on_epoch_end(search, info, 0, {"loss": 1.0, "val_accuracy": 0.5})
        if down_at_end:
            server.down()
        hooks.on_trial_end(search, info, result(info, status))

    run_trial(1)
    tracker._wait_for_background()
    run_trial(2, down_at_end=True)  # its run was created, then the server went away: left RUNNING
    run_trial(3, FAILED)  # begun and ended while it is down: no run at all
    run_trial(4)
    server.up()
    run_trial(5)  # its start finds the server back: 2, 3 and 4 are sent first
    hooks.on_search_end(search, COMPLETED)
    hooks.on_search_end(search, COMPLETED)  # again (a resume): nothing is sent twice

    err = capsys.readouterr().err
    assert err.count("MLflow tracking lost") == 1, err
    # 2, 3 and 4 at trial 5's start; or also 5, at its end, when the server was not ready at its start.
    assert len(re.findall(r"MLflow tracking back: [34] trials sent\.", err)) == 1, err
    client = MlflowClient(server.uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    trial_runs = [r for r in runs if r.data.tags.get("trial_id")]
    by_trial = collections.defaultdict(list)
    for r in trial_runs:
        by_trial[r.data.tags["trial_id"]].append((r.info.status, r.data.tags["status"]))
    assert dict(by_trial) == {"00": [("FINISHED", COMPLETED)], "01": [("FINISHED", COMPLETED)],
                              "02": [("FAILED", FAILED)], "03": [("FINISHED", COMPLETED)],
                              "04": [("FINISHED", COMPLETED)]}
    (parent,) = [r for r in runs if not r.data.tags.get("trial_id")]
    assert parent.info.status == "FINISHED"
    for r in trial_runs:
        if r.info.status == "FINISHED":  # what another machine's report and ensemble fetch
            assert r.data.tags[tracking.FILES_SENT] == "true"
            assert {a.path for a in client.list_artifacts(r.info.run_id, "trial")} >= {
                "trial/result.json", "trial/val_probabilities.npy", "trial/val_labels.npy"}


def test_three_machines_through_an_mlflow_outage_across_trial_ends(zygote, database, server, digits_folders,
                                                                    tmp_path):
    url = database()
    home = tmp_path / "cwd"  # where the workers run: its mlflow.yaml names this test's experiment
    home.mkdir()
    (home / "mlflow.yaml").write_text(f'experiment: "outage-{tmp_path.name}"\n')
    env = {"MLFLOW_TRACKING_URI": server.uri, "TRIAL_SECONDS": "3"}

    def command(folder: Path) -> list[str]:
        return [str(SLOW), "--data", str(digits_folders), "--storage", url, "--runs-dir", str(folder), "--quiet",
                "--no-ensemble"]

    jobs = [zygote.start("run", *command(tmp_path / f"machine{i}"), env=env, cwd=home) for i in (1, 2, 3)]
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + 300
    while True:  # the server goes away as the first trial ends, the others ending during the outage
        try:
            with engine.connect() as db:
                if db.execute(sa.text("select count(*) from trials where state = 'COMPLETE'")).scalar():
                    break
        except sa.exc.ProgrammingError:
            pass  # the workers have not created Optuna's tables yet
        assert time.monotonic() < deadline and not any(j.ended.done() for j in jobs)
        time.sleep(0.1)
    engine.dispose()
    server.down()
    time.sleep(OUTAGE)
    server.up()
    ended = [job.result(timeout=600) for job in jobs]
    for e in ended:
        assert e.code == 0, e.output[-4000:]
        assert "Traceback" not in e.output and e.output.count("tracking lost") <= 1, e.output[-4000:]
        assert ("tracking lost" in e.output) == ("tracking back" in e.output), e.output[-4000:]
    assert sum("tracking lost" in e.output for e in ended) >= 2, [e.stderr[-1500:] for e in ended]

    trials = optuna.load_study(study_name="slow", storage=url).trials
    complete = sorted(f"{t.number:04d}" for t in trials if t.state == TrialState.COMPLETE)
    assert len(complete) == 6
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(f"outage-{tmp_path.name}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [r for r in runs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status) for r in runs]
    finished = collections.Counter(r.data.tags["trial_id"] for r in runs
                                   if r.data.tags.get("trial_id") and r.info.status == "FINISHED")
    assert finished == {trial_id: 1 for trial_id in complete}, finished

    # A machine that ran none of the trials: its report lists them all, from the study and the server.
    elsewhere = tmp_path / "machine4"
    joined = zygote.run("run", *command(elsewhere), env=env, cwd=home)
    assert joined.code == 0 and "has its 6 finished trials" in joined.stderr, joined.output[-3000:]
    assert not list((elsewhere / "slow" / "trials").glob("*/result.json"))
    report = zygote.run("report", "slow", "--runs-dir", elsewhere, "--no-mlflow", env=env, cwd=home)
    assert report.code == 0, report.output[-3000:]
    board = pd.read_csv(SpaceDir(elsewhere / "slow").path / "leaderboard.csv", dtype={"trial_id": str})
    assert sorted(board["trial_id"]) == complete, board
    # Without the tracking store, the study itself still lists every trial and names where each ran.
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "mlflow.yaml").write_text("enabled: false\n")
    alone = zygote.run("report", "slow", "--runs-dir", elsewhere, "--no-mlflow", env=env, cwd=offline)
    assert alone.code == 0, alone.output[-3000:]
    assert "6 of 6 trials completed" in alone.stdout, alone.stdout[-3000:]
    named = [line for line in alone.stdout.splitlines() if "listed from the study's summary" in line]
    assert sorted(line.split()[2] for line in named) == complete, alone.stdout[-3000:]
    assert all(f"ran on {socket.gethostname()}:" in line for line in named), named
    lost = [e.stderr for e in ended if "tracking lost" in e.stderr]
    print(f"\n{len(lost)} of 3 workers lost tracking for {OUTAGE:.0f} s;",
          *[line for e in lost for line in e.splitlines() if "tracking back" in line])
