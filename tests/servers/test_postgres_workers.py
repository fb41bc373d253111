"""The README's recipe for many workers, on a real PostgreSQL server: workers started at the
same instant on a fresh, empty database all run, and the study gets exactly its trials."""

from __future__ import annotations

import collections
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from conftest import TINY
from processes import Zygote, run_together

MAX_TRIALS = 6


def recipe(zygote: Zygote, url: str, digits: Path, root: Path, workers: int = 3, max_trials: int = MAX_TRIALS) -> list[str]:
    """The README's command on `workers` "machines" (runs folders) at once; checks and returns
    a line per fact worth quoting."""
    runs = [root / f"R{i}" for i in range(1, workers + 1)]
    command = [str(TINY), "--data", str(digits), "--algorithm", "tpe", "--max-trials", str(max_trials),
               "--storage", url, "--quiet"]
    ended = run_together(zygote, [([*command, "--runs-dir", str(r)], None) for r in runs])
    for e in ended:
        assert e.code == 0, e.output[-4000:]
        assert "Traceback" not in e.output and "Heartbeat of storage" not in e.output, e.output[-4000:]
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    states = collections.Counter(t.state for t in trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == max_trials, states
    # A trial beyond the budget, asked by workers racing for the last one, is marked surplus; nothing else fails.
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL), states
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Each trial ran on exactly one worker: the runs folders hold each trial's record once.
    recorded = sorted(d.parent.name for r in runs for d in (r / "tiny" / "trials").glob("*/result.json"))
    assert recorded == sorted(f"{t.number:04d}" for t in finished), recorded
    per_worker = [len(list((r / "tiny" / "trials").glob("*/result.json"))) for r in runs]
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as db:
        claims = db.execute(sa.text("select key, holder from transfer_search_claims")).all()
    engine.dispose()
    assert [key for key, _ in claims] == ["tiny:promote"] and '"done": true' in claims[0][1]
    promoted = sum("Champion:" in e.stdout for e in ended)
    assert promoted == 1, [e.stdout[-800:] for e in ended]
    # Each machine has its own MLflow store here: the promoter cannot get the others' trials,
    # says so, and does not wait for them.
    assert not any("waiting for" in e.stdout for e in ended)
    promoter = next(e for e in ended if "Champion:" in e.stdout)
    assert max(per_worker) == max_trials or "this runs folder's own" in promoter.stderr, promoter.stderr[-2000:]
    return [f"exit codes {[e.code for e in ended]}; study: {dict((s.name, n) for s, n in states.items())}; "
            f"trials per worker {per_worker}; one promotion"]


# In CI, test_machines.py and test_tracking_outage.py each start three workers at the same instant
# on a fresh, empty PostgreSQL database; this test does it three times over.
@pytest.mark.slow
def test_three_workers_started_at_once_on_three_empty_databases(zygote, database, digits_folders, tmp_path):
    for attempt in range(3):  # the race is at the start: after the first, a trial per worker is enough
        print(f"database {attempt + 1}:", *recipe(zygote, database(), digits_folders, tmp_path / str(attempt),
                                                  max_trials=MAX_TRIALS if attempt == 0 else 3))
