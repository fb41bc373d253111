"""The trials of workers that died: told their recorded result, or failed and queued again.

Each running trial carries its worker (`search.liveness.workers.Worker`) and a heartbeat, beaten
by a process of its own (`search.liveness.heartbeat`): Optuna's heartbeat on an RDB storage, a
user attribute on the journal. A running trial is failed and queued again with the same
values (Optuna's `RetryHeartbeatStaleTrialCallback`) by whichever worker sees first that its
worker is dead (its process is gone, where process ids can be compared), or that its
heartbeat is older than `grace_period` when the worker is elsewhere. A worker known to be
alive is never failed, however late its heartbeat. A trial whose record
(trials/<id>/result.json) says it ended is told that result instead of being run again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search import compat
from search.core.status import ENDED, FAILED, PRUNED
from search.declare import Search
from search.liveness import workers
from search.liveness.claims import Claims
from search.engine.optuna_storage import call_with_retries, tell
from search.runs import faults
from search.runs.layout import SpaceDir

# The user attribute that marks a trial failed because its worker died: {"trial": its number,
# "why": how that was seen}. Such a trial is owed a retry with the same values. The number
# tells the trial apart from its retries, which Optuna gives a copy of its user attributes.
LOST = "lost"


def lost(trial: optuna.trial.FrozenTrial) -> str | None:
    """Why `trial` was failed as a dead worker's, or None when it was not."""
    mark = trial.user_attrs.get(LOST)
    return str(mark.get("why")) if isinstance(mark, dict) and mark.get("trial") == trial.number else None
# Seconds after which a running trial that names no worker is taken for orphaned (its worker
# records itself right after asking); the grace period when that is shorter.
ORPHAN_AFTER = 30.0


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that use up the budget: all but the failed ones that were queued again or
    recovered from their record, and surplus asks."""
    replaced = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    replaced |= {t.system_attrs["recovers"] for t in trials if "recovers" in t.system_attrs}
    return [t for t in trials
            if not (t.state == TrialState.FAIL and (t.number in replaced or t.user_attrs.get("surplus")))]


class Reaper:
    """The reaping half of `OptunaOracle`: what it needs of the oracle is declared here."""

    search: Search
    folder: SpaceDir | None
    metric: str
    multi: bool
    grace_period: float
    recovered: list[int]
    on_lost: Callable[[str], None]
    on_recovered: Callable[[dict[str, Any]], None]
    _asked: dict[str, optuna.Trial]
    _rdb: bool
    _claims: Claims | None

    @property
    def study(self) -> optuna.Study:
        raise NotImplementedError

    @property
    def name(self) -> str:
        raise NotImplementedError

    def _storage_call(self, call: Callable[[], Any]) -> Any:
        """Every storage call of a worker: retried while the database restarts (`call_with_retries`)."""
        return call_with_retries(call)

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        return self._storage_call(lambda: self.study.get_trials(deepcopy=False))

    def _record(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
        from search.results.records import read_record

        kt_id = trial.user_attrs.get("kt_trial_id")
        if self.folder is None or not kt_id:
            return None
        record = read_record(self.folder.trial(str(kt_id)))
        return record if record and record["status"] in ENDED else None

    def _values(self, record: dict[str, Any]) -> list[float] | None:
        best = record.get("best") or {}
        value = best.get(self.metric)
        if record["status"] == FAILED or value is None:
            return None
        values = [float(value)]
        if self.multi:
            cost = best.get("latency_ms") if self.search.minimize == "latency_ms" else record.get(str(self.search.minimize))
            if cost is None:
                return None
            values.append(float(cost))
        return values

    def _tell_recorded(self, trial: optuna.trial.FrozenTrial, record: dict[str, Any]) -> None:
        values = self._values(record)
        if trial.state == TrialState.RUNNING:
            try:
                if record["status"] == PRUNED and not self.multi:
                    tell(self.study, trial.number, state=TrialState.PRUNED)
                elif values is None:
                    tell(self.study, trial.number, state=TrialState.FAIL)
                else:
                    tell(self.study, trial.number, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Ended since it was read: by its own worker, which writes the record a moment
                # before it tells, or by another worker reaping it too. That one accounts for it;
                # a FAIL whose record has a result is told as a trial of its own by a later reap.
                return
        elif values is not None:  # already failed by another worker: add its result as a trial of its own
            self._storage_call(lambda: self.study.add_trial(optuna.trial.create_trial(
                values=values, params=trial.params, distributions=trial.distributions, user_attrs=trial.user_attrs,
                system_attrs={"recovers": trial.number})))
        self.recovered.append(trial.number)
        self.on_lost(f"{trial.number:04d}")
        self.on_recovered(record)
        print(f"Optuna trial {trial.number} had ended ({record['status']}) when its worker stopped; told its "
              "recorded result instead of running it again.", flush=True)

    def reap(self) -> None:
        """Handle the trials of workers that died: tell their recorded result, or fail and queue them again."""
        trials = self._trials()
        stale_ids = set(self._storage_call(lambda: compat.stale_trial_ids(self.study))) if self._rdb else set()
        recovered = {t.system_attrs["recovers"] for t in trials if "recovers" in t.system_attrs}
        retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
        retry_state = {RetryHeartbeatStaleTrialCallback.retried_trial_number(t): t.state for t in trials}
        for t in trials:
            if t.state == TrialState.FAIL and t.number in retried and t.number not in recovered \
                    and retry_state.get(t.number) == TrialState.WAITING:
                record = self._record(t)
                if record is not None and self._values(record) is not None:
                    self._tell_recorded(t, record)  # its WAITING retry is skipped when asked
                continue
            if t.state == TrialState.FAIL and lost(t) and t.number not in retried and t.number not in recovered:
                # Failed as a dead worker's by a worker that died before queueing it again.
                record = self._record(t)
                if record is not None and self._values(record) is not None:
                    self._tell_recorded(t, record)
                elif self._requeue(t.number):
                    print(f"Optuna trial {t.number} had been failed ({lost(t)}) by a worker that stopped "
                          "before queueing it again: queued again with the same values.", flush=True)
                continue
            if t.state != TrialState.RUNNING or f"{t.number:04d}" in self._asked:
                continue
            worker = workers.Worker.from_record(t.user_attrs.get("worker"))
            life = workers.alive(worker)
            if life is True:
                continue  # alive, however late its heartbeat: it will tell its own result
            record = self._record(t)
            if record is not None:
                self._tell_recorded(t, record)
                continue
            beat = t.user_attrs.get("heartbeat")
            started = t.datetime_start.timestamp() if t.datetime_start else None
            if worker is None and beat is None:
                # No worker claimed it: its worker died between asking for it and saying who it
                # is, milliseconds apart, or the database's answer to the ask was lost and the
                # ask was retried. No heartbeat will ever come: its age is all there is to go by.
                if workers.beat_is_stale(started, min(self.grace_period, ORPHAN_AFTER)):
                    self._fail_and_requeue(t, None, "no worker claimed it: its worker stopped, or lost the "
                                                    "database's answer, as it asked for it")
                continue
            if beat is None:  # its worker died after saying who it is, before its first beat
                stale = life is False or workers.beat_is_stale(started, self.grace_period)
            else:
                stale = life is False or (compat.trial_id(t) in stale_ids if self._rdb
                                           else workers.beat_is_stale(float(beat), self.grace_period))
            if stale:
                self._fail_and_requeue(t, worker, "its process is gone" if life is False else
                                       f"no heartbeat for {self.grace_period:.0f}s")

    def _fail_and_requeue(self, t: optuna.trial.FrozenTrial, worker: workers.Worker | None, why: str) -> None:
        """Fail a dead worker's trial and queue it again with its values. Failing and queueing
        are two writes: the trial is marked LOST first, so that a FAIL whose retry never came
        (this process killed in between) is told apart from a trial that failed on its own, and
        queued by the next `reap`."""
        try:
            mark = {"trial": t.number, "why": why}
            self._storage_call(lambda: compat.set_user_attr(self.study, t, LOST, mark))
            tell(self.study, t.number, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError):
            return  # another worker failed it first, and queues it again
        self.on_lost(f"{t.number:04d}")
        faults.point("reaped")
        if self._requeue(t.number):
            print(f"Optuna trial {t.number} of worker {worker or t.user_attrs.get('worker', '?')} stopped ({why}): "
                  "failed, and queued again with the same values.", flush=True)

    def _requeue(self, number: int) -> bool:
        """Queue the failed trial `number` again with its values, once whichever workers try:
        under a claim in the study's storage, taken over when its holder died before queueing."""
        claims = self._claims
        assert claims is not None
        key = f"{self.name}:retry:{number}"
        won, _ = self._storage_call(lambda: claims.claim(key, stale_after=self.grace_period))
        if not won:
            return False
        trials = self._trials()
        if number not in {n for x in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(x)}:
            failed = next(x for x in trials if x.number == number)
            self._storage_call(lambda: RetryHeartbeatStaleTrialCallback()(self.study, failed))
        self._storage_call(lambda: claims.finish(key))
        return True
