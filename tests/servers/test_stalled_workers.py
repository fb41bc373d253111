"""The heartbeat under load: three workers on one runs folder (the journal file) on this busy
machine, each trial's first epoch longer than the grace period with the interpreter lock held.
No trial may be taken for dead while its process lives: not by a worker that can look its
process up (same machine), nor by one that only sees its heartbeat (other machines)."""

from __future__ import annotations

import collections
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from processes import run_together

STALLED = Path(__file__).with_name("stalled.py")
STALL = 7.0


@pytest.mark.parametrize("where", [pytest.param("one machine", marks=pytest.mark.slow), "other machines"])  # CI: the case a pid cannot settle
def test_a_worker_stalled_past_the_grace_period_is_never_taken_for_dead(zygote, where, digits_folders, tmp_path):
    env = {"STALL_SECONDS": str(STALL), **({"STALL_ELSEWHERE": "1"} if where == "other machines" else {})}
    command = [str(STALLED), "--data", str(digits_folders), "--runs-dir", str(tmp_path), "--quiet", "--no-tracking",
               "--no-ensemble"]
    ended = run_together(zygote, [(command, env)] * 3)
    for e in ended:
        assert e.code == 0, e.output[-4000:]
        assert "no heartbeat" not in e.output and "took Optuna trial" not in e.output, e.output[-4000:]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "stalled" / "optuna.journal")))
    trials = optuna.load_study(study_name="stalled", storage=storage).trials
    states = collections.Counter(t.state.name for t in trials)
    assert not [t for t in trials if "failed_trial" in t.system_attrs], states  # nothing queued again
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL), states
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6, states
    table = pd.read_csv(tmp_path / "stalled" / "trials.csv")
    assert list(table["status"]) == ["COMPLETED"] * 6
    assert (table["seconds"] > STALL).all(), table["seconds"]  # each trial did stall past the grace period
    assert table["worker"].nunique() == 3
    print(f"\n{where}: {dict(states)}; trial seconds {sorted(table['seconds'])} against a 4 s grace period; "
          f"workers {sorted(table['worker'].unique())}")
