"""Workers on separate machines: each its own runs folder, one study on PostgreSQL, one MLflow
server that holds every trial's files. One worker is killed mid-trial (SIGKILL, as a lost
machine) and later started again; the study, the tracking store, the registry and the
report and ensemble of any one machine must all come out as if nothing had happened."""

from __future__ import annotations

import collections
import json
import signal
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from conftest import TINY
from processes import run_together

MAX_TRIALS = 6
# Each test of the session gets its own experiment and registered model on the shared server.
CONFIG = """experiment: "machines-{{space}}-{name}"
registered_model_name: "machines-{{space}}-{name}"
"""


def test_workers_on_three_machines_one_killed_mid_trial(zygote, database, mlflow_server, digits_folders, tmp_path):
    import mlflow

    url = database()
    home = tmp_path / "cwd"  # where the workers run: its mlflow.yaml names this test's experiment
    home.mkdir()
    (home / "mlflow.yaml").write_text(CONFIG.format(name=tmp_path.name))
    experiment_name, model_name = f"machines-tiny-{tmp_path.name}", f"machines-tiny-{tmp_path.name}"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    runs = [tmp_path / f"machine{i}" for i in (1, 2, 3)]

    def command(folder: Path) -> list[str]:
        return [str(TINY), "--data", str(digits_folders), "--algorithm", "tpe", "--max-trials", str(MAX_TRIALS),
                "--storage", url, "--runs-dir", str(folder), "--quiet"]

    killed = {**env, "SEARCH_FAULT": "point:epoch-end@1"}  # SIGKILL at its first trial's first epoch end
    first = run_together(zygote, [(command(runs[0]), env), (command(runs[1]), killed), (command(runs[2]), env)],
                         cwd=home)
    codes = [e.code for e in first]
    assert codes[1] == -signal.SIGKILL, first[1].output[-3000:]
    for e in (first[0], first[2]):
        assert e.code == 0, e.output[-4000:]
    # The machine comes back: the same command, which finds the study done and marks its dead run KILLED.
    again = zygote.run("run", *command(runs[1]), env=env, cwd=home)
    # It ran no trial itself, and that is no failure: the study has its trials.
    assert again.code == 0 and f"has its {MAX_TRIALS} finished trials" in again.stderr, again.output[-4000:]
    for e in (*first, again):
        assert "Traceback" not in e.output and "View run" not in e.output, e.output[-4000:]

    # The study: exactly its trials, the killed one failed and run again with its values.
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    states = collections.Counter(t.state.name for t in trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == MAX_TRIALS, states
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert len(failed) == 1, states
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == failed[0].params
    numbers = sorted(f"{t.number:04d}" for t in finished)

    # The tracking store: each finished trial once, FINISHED; the dead worker's run KILLED, none RUNNING.
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(experiment_name)
    trial_runs = [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
                  if r.data.tags.get("trial_id")]
    by_status = collections.Counter((r.info.status, r.data.tags.get("status")) for r in trial_runs)
    done = sorted(r.data.tags["trial_id"] for r in trial_runs if r.info.status == "FINISHED")
    assert done == numbers, by_status
    assert all(r.data.tags.get("status") == "COMPLETED" for r in trial_runs if r.info.status == "FINISHED")
    assert [r.data.tags["trial_id"] for r in trial_runs if r.info.status != "FINISHED"] == [f"{failed[0].number:04d}"]
    assert [r.info.status for r in trial_runs if r.info.status != "FINISHED"] == ["KILLED"]
    for r in trial_runs:
        if r.info.status == "FINISHED":  # what other machines fetch, sent over HTTP to the server
            assert {a.path for a in client.list_artifacts(r.info.run_id, "trial")} == {
                f"trial/{n}" for n in ("result.json", "val_probabilities.npy", "model.keras", "val_labels.npy")}

    # One promotion for the whole study, registered once.
    promotions = [e for e in (*first, again) if "Champion:" in e.stdout]
    assert len(promotions) == 1
    versions = client.search_model_versions(f"name = '{model_name}'")
    assert len(versions) == 1, versions
    promoter = next(r for r in runs if (r / "tiny" / "ensemble.json").is_file())
    promoted = json.loads((promoter / "tiny" / "ensemble.json").read_text())
    assert promoted["trials"] == numbers, promoted["trials"]

    # Any one machine's report and ensemble see the whole study, fetched from the server.
    local = sorted(p.parent.name for p in (runs[0] / "tiny" / "trials").glob("*/result.json"))
    assert 0 < len(local) < MAX_TRIALS
    report = zygote.run("report", "tiny", "--runs-dir", runs[0], "--no-mlflow", env=env, cwd=home)
    assert report.code == 0, report.output[-3000:]
    board = pd.read_csv(runs[0] / "tiny" / "leaderboard.csv", dtype={"trial_id": str})
    assert sorted(board["trial_id"]) == numbers and set(board["status"]) == {"COMPLETED"}
    ensemble = zygote.run("ensemble", "tiny", "--runs-dir", runs[0], "--no-tracking", env=env, cwd=home)
    assert ensemble.code == 0, ensemble.output[-3000:]
    assert json.loads((runs[0] / "tiny" / "ensemble.json").read_text())["trials"] == numbers
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1  # --no-tracking registered nothing

    print(f"\nexit codes {codes} (the killed machine: {codes[1]}), restarted: {again.code}")
    print(f"study: {dict(states)}; trial {failed[0].number} killed, re-run as trial {retry[0].number} "
          f"with the same values {retry[0].params}")
    print(f"MLflow trial runs: {dict((f'{a}/{b}', n) for (a, b), n in by_status.items())}; registered versions: "
          f"{len(versions)}; promoted by {promoter.name} from trials {promoted['trials']}")
    print(f"{runs[0].name} ran {local} itself; its report and ensemble used {sorted(board['trial_id'])}")
    print("report:", *[line for line in report.stdout.splitlines() if line.startswith(("Leaderboard", "note:"))])
    print("ensemble:", *[line for line in ensemble.stdout.splitlines() if line.startswith(("Ensembles", "Promoted"))])
