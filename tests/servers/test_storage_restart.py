"""The heartbeat survives the study's database restarting at any moment: while a worker's
heartbeat process starts, and while its trial trains. No running trial may go without a
beat for the grace period, or a worker on another machine takes it for dead and runs it twice."""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from search import compat
from search.engine.reaper import lost
from search.liveness.heartbeat import Heartbeat
from servers.clusters import Postgres, running

SLOW = Path(__file__).with_name("slow.py")
GRACE = 12.0  # slow.py's grace period; its heartbeat interval is 1 s
DOWN = 2.0  # seconds the database stays down in each restart
RESUME = 10.0  # seconds within which every running trial is beaten again once it answers: inside GRACE, on a busy machine


@pytest.fixture
def cluster() -> Iterator[Postgres]:
    """A PostgreSQL server of this test's own: the test stops it, and no other test may see that."""
    yield from running(Postgres(), "PostgreSQL")


def _restart(cluster: Postgres) -> None:
    cluster.down()
    time.sleep(DOWN)
    cluster.up()


def test_a_heartbeat_process_started_while_the_database_is_down_beats_once_it_is_back(cluster, capfd):
    url = cluster.database("beats")
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=int(GRACE))
    trial = optuna.create_study(storage=storage, study_name="s").ask()
    storage.engine.dispose()
    cluster.down()
    beats = Heartbeat(url, interval=1)
    try:
        beats.beat([compat.trial_id(trial)])
        time.sleep(4)  # it starts, and finds the database down
        assert beats._process is not None and beats._process.poll() is None, "the heartbeat process died"
        cluster.up()
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        age = None
        deadline = time.monotonic() + 30
        while age is None and time.monotonic() < deadline:
            time.sleep(0.25)
            with engine.connect() as db:
                age = db.execute(sa.text("select extract(epoch from localtimestamp - heartbeat) "
                                         "from trial_heartbeats")).scalar()
        engine.dispose()
        assert age is not None and float(age) < 3, age
    finally:
        beats.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and err.count("does not answer") == 1, err


class Beats:
    """Polls the study's database: the oldest heartbeat of a running trial seen at any moment."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.oldest = 0.0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.25):
            try:
                with self.engine.connect() as db:
                    ages = db.execute(sa.text(
                        "select extract(epoch from localtimestamp - h.heartbeat) from trials t "
                        "join trial_heartbeats h on h.trial_id = t.trial_id where t.state = 'RUNNING'")).scalars()
                    self.oldest = max([self.oldest, *(float(a) for a in ages)])
                    self.polls += 1
            except sa.exc.DBAPIError:
                continue  # the database is down: nobody can read or reap meanwhile

    def resumed(self, within: float) -> float:
        """Seconds from the database answering again until every running trial has been beaten
        since (the beats a restart interrupted resume); `within` seconds at most."""
        started = time.monotonic()
        back = None
        while time.monotonic() - started < within:
            try:
                with self.engine.connect() as db:
                    back = back or db.execute(sa.text("select localtimestamp")).scalar()
                    behind = db.execute(sa.text(
                        "select count(*) from trials t join trial_heartbeats h on h.trial_id = t.trial_id "
                        "where t.state = 'RUNNING' and h.heartbeat < :back"), {"back": back}).scalar()
                if not behind:
                    return time.monotonic() - started
            except sa.exc.DBAPIError:
                pass
            time.sleep(0.1)
        return within

    def running(self) -> list[int]:
        for _ in range(100):
            try:
                with self.engine.connect() as db:
                    return list(db.execute(sa.text("select number from trials where state = 'RUNNING'")).scalars())
            except sa.exc.DBAPIError:
                time.sleep(0.2)
        raise AssertionError("the database did not answer")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


def _training(outputs: list[Path]) -> tuple[int, int]:
    """(trials begun, trials training) by the workers writing `outputs`, from their console lines."""
    lines = [line for path in outputs if path.exists() for line in path.read_text().splitlines()]
    begun = sum(bool(re.match(r"Trial \d+ \(", line)) for line in lines)
    return begun, begun - sum(bool(re.match(r"Trial \d+ (COMPLETED|FAILED|PRUNED)", line)) for line in lines)


def test_the_database_restarted_as_workers_start_and_as_they_train(zygote, cluster, digits_folders, tmp_path):
    url = cluster.database("study")
    command = [str(SLOW), "--data", str(digits_folders), "--storage", url, "--quiet", "--no-tracking", "--no-ensemble"]
    jobs = [zygote.start("run", *command, "--runs-dir", str(tmp_path / f"machine{i}")) for i in (1, 2, 3)]
    outputs = [zygote.folder / f"job-{job.id}.stdout" for job in jobs]
    beats = Beats(url)
    downtime: list[float] = []
    resumed: list[float] = []
    try:
        # Each restart as all three workers have just begun a trial (their heartbeat processes
        # starting, in the first round) and none is asking the study for one: the worker's own
        # storage calls are not what this test is about.
        for begun in (3, 6):
            deadline = time.monotonic() + 300
            while _training(outputs) != (begun, 3) or len(beats.running()) != 3:
                assert time.monotonic() < deadline and not any(j.ended.done() for j in jobs), _training(outputs)
                time.sleep(0.1)
            down = time.monotonic()
            _restart(cluster)
            downtime.append(time.monotonic() - down)
            resumed.append(beats.resumed(within=2 * GRACE))
        ended = [job.result(timeout=600) for job in jobs]
    finally:
        beats.close()
    for e in ended:
        assert e.code == 0, e.output[-4000:]
        assert "no heartbeat" not in e.output and "took Optuna trial" not in e.output, e.output[-4000:]
        assert "Traceback" not in e.output, e.output[-4000:]
    trials = optuna.load_study(study_name="slow", storage=url).trials
    states = collections.Counter(t.state.name for t in trials)
    assert not [t for t in trials if "failed_trial" in t.system_attrs or "lost" in t.user_attrs], states
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6, states
    # Every running trial beaten again within seconds of the database answering: no beat is
    # older than the grace period but for a restart that itself outlasts it (down: nobody beats).
    assert max(resumed) < RESUME, f"beats resumed {resumed} s after the database came back"
    assert beats.polls > 0 and beats.oldest < max(downtime) + RESUME + 1, (beats.oldest, downtime)
    print(f"\nstudy {dict(states)}; database down {', '.join(f'{d:.1f}' for d in downtime)} s; every running trial "
          f"beaten again {', '.join(f'{r:.1f}' for r in resumed)} s after it answered; the oldest beat of a "
          f"running trial seen: {beats.oldest:.1f} s (grace {GRACE:.0f} s)")


# In CI, tests/servers/test_storage_retries.py cuts each storage call of a worker (ask, report, tell,
# reading the study) on a real PostgreSQL, before and after its write, and the test above restarts the
# database as workers start and train; this one restarts it eight seconds in every eleven for a search.
@pytest.mark.slow
def test_a_worker_asking_and_telling_as_the_database_restarts_finishes_its_search(zygote, cluster, digits_folders,
                                                                                   tmp_path):
    """Outages longer than a few retries, while the worker asks for trials, reports epochs and
    tells results (trials of 1 s): every call waits for the database, none crashes the worker.

    An ask cut after the database created its trial leaves that trial to no one: it is failed
    after the grace period and queued again like a dead worker's, and its retry (which carries
    the orphan's mark, as Optuna copies user attributes) counts as a trial of its own."""
    url = cluster.database("asking")
    command = [str(SLOW), "--data", str(digits_folders), "--storage", url, "--quiet", "--no-tracking", "--no-ensemble",
               "--runs-dir", str(tmp_path / "machine")]
    job = zygote.start("run", *command, env={"TRIAL_SECONDS": "1"})
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + 300
    while True:  # from its first trial told on, the database goes down for 8 s in every 11
        try:
            with engine.connect() as db:
                if db.execute(sa.text("select count(*) from trials where state = 'COMPLETE'")).scalar():
                    break
        except sa.exc.ProgrammingError:
            pass  # Optuna's tables are not there yet
        assert time.monotonic() < deadline and not job.ended.done(), job.ended.done() and job.result().output[-3000:]
        time.sleep(0.1)
    engine.dispose()
    restarts = 0
    while restarts < 3 and not job.ended.done():
        cluster.down()
        time.sleep(8)
        cluster.up()
        restarts += 1
        time.sleep(3)
    ended = job.result(timeout=600)
    assert ended.code == 0 and "Traceback" not in ended.output, ended.output[-4000:]
    assert restarts == 3, f"the search ended after {restarts} restarts: too fast to test anything"
    trials = optuna.load_study(study_name="slow", storage=url).trials
    states = collections.Counter(t.state.name for t in trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING], states
    seen = [(t.number, t.state.name, t.user_attrs.get("kt_trial_id"), sorted(t.user_attrs), t.system_attrs)
            for t in trials]  # what a failure needs to be understood
    # Only trials no worker had claimed may be failed as lost: none that trained.
    assert not [t for t in trials if lost(t) and "kt_trial_id" in t.user_attrs], (seen, ended.output[-3000:])
    finished = [t for t in trials if t.state.is_finished() and not (lost(t) or t.user_attrs.get("surplus"))]
    ids = [t.user_attrs.get("kt_trial_id") for t in finished]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6 and len(ids) == len(set(ids)) == 6, \
        (states, seen, ended.output[-3000:])
