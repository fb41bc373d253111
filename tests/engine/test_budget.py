"""Search(time_budget=...): no trial starts that cannot finish its first epoch, the running one
stops at the budget with its best epoch kept, and the ensemble is still promoted."""

from __future__ import annotations

import json
import time

import pytest
from conftest import TINY

from search import run
from search.engine import budget as budgets
from search.errors import SpaceError
from search.results.records import load_records
from search.runs.layout import SpaceDir

SLOW_EPOCHS = """

def callbacks(hp):
    import time

    import keras

    # Half a second a batch: epochs long enough for a budget of seconds to cut one.
    return [keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.5))]
"""


def test_durations_parse_and_nonsense_is_one_line():
    assert budgets.parse("2h") == 7200 and budgets.parse("1h30m") == 5400 and budgets.parse("90s") == 90
    assert budgets.parse(45) == 45 and budgets.parse(None) is None
    for wrong in ("soon", "-5m", 0, "2 hours"):
        with pytest.raises(SpaceError, match="time_budget"):
            budgets.parse(wrong)


def test_a_search_stops_at_its_budget_keeps_the_best_epoch_and_promotes(tmp_path, digits_folders, capsys):
    space = tmp_path / "slow.py"
    space.write_text(TINY.read_text() + SLOW_EPOCHS)
    limit = 12.0
    started = time.monotonic()
    code = run.main([str(space), "--data", str(digits_folders), "--max-trials", "20", "--set", "epochs=30",
                     "--time-budget", f"{limit:.0f}s", "--runs-dir", str(tmp_path), "--no-tracking", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    records = sorted(load_records(SpaceDir(tmp_path / "slow")), key=lambda r: int(r["trial_id"]))
    assert 1 <= len(records) < 20
    last = records[-1]
    assert last["status"] == "COMPLETED" and last["epochs_run"] < 30
    assert last["note"].startswith("stopped at the time budget")
    epoch = max(r["seconds"] / r["epochs_run"] for r in records)
    searched = json.loads((tmp_path / "slow" / "ensemble.json").read_text())  # the ensemble step ran
    assert searched["finished_trials"] == len(records)
    trained = sum(r["seconds"] for r in records)
    assert trained <= limit + 2 * epoch  # the budget, plus the epoch cut short and its validation
    assert "Time budget 0.2 min: used" in out and f"{len(records)} of 20 trials done" in out
    assert time.monotonic() - started < limit + 60  # start-up, the cut epoch and the promotion on top


@pytest.mark.slow  # waits out a 45 s budget; CI keeps the budget test above and the outage tests' no-RUNNING checks
def test_a_search_stopped_by_its_budget_with_tracking_terminates_every_mlflow_run(tmp_path, digits_folders, capsys,
                                                                                   monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    space = tmp_path / "slow.py"
    space.write_text(TINY.read_text() + SLOW_EPOCHS)
    code = run.main([str(space), "--data", str(digits_folders), "--max-trials", "20", "--set", "epochs=30",
                     "--time-budget", "45s", "--runs-dir", str(tmp_path), "--quiet"])  # start-up is in it
    captured = capsys.readouterr()
    assert code == 0, captured.out[-2000:] + captured.err[-2000:]
    assert "Time budget 0.8 min" in captured.out  # it ended by its budget
    assert "tracking is off" not in captured.out + captured.err  # tracking stayed on to the end
    client = MlflowClient(uri)
    every = client.search_runs([e.experiment_id for e in client.search_experiments()])
    searches = [r for r in every if "space_sha256" in r.data.tags and "mlflow.parentRunId" not in r.data.tags]
    assert len(searches) == 1 and searches[0].info.status == "FINISHED"
    assert searches[0].data.tags["status"] == "STOPPED"
    assert every and not [r.info.run_name for r in every if r.info.status == "RUNNING"]
