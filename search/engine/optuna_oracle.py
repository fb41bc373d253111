"""Optuna behind Keras Tuner's `HyperParameters`: an oracle whose values come from a study.

`OptunaOracle` asks an Optuna study for each trial's values (`study.ask()`) and tells it
results; `search.engine.optuna_source` is the search loop's side of it. The study lives in a
storage that many workers can share (`search.engine.optuna_storage`): by default a journal
file `runs/<space>/optuna.journal`, or any `--storage URL`. A trial's id is its study trial
number (zero-padded), unique across workers. The trials of workers that died are handled by
`search.engine.reaper`; workers stay until the study's last trial ends, so no trial is left
behind.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_tuner as kt
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search import compat
from search.core.hooks import TrialResult
from search.core.status import ENDED, PRUNED
from search.declare import Search
from search.engine import interrupts
from search.liveness.claims import Claims
from search.liveness.heartbeat import Heartbeat
from search.engine.optuna_storage import open_storage, storage_for_children, tell
from search.engine.reaper import LOST, Reaper, counted, lost
from search.engine.samplers import distributions, make_pruner, make_sampler, suggest, typed_options
from search.errors import SearchError
from search.redaction import redact
from search.liveness import workers
from search.runs import faults
from search.runs.layout import SpaceDir

__all__ = ["LOST", "OptunaOracle", "counted", "lost", "open_storage", "storage_for_children", "suggest",
           "typed_options", "make_sampler"]

TrialStatus = kt.engine.trial.TrialStatus
optuna.logging.set_verbosity(optuna.logging.WARNING)
# TPE's `group` (conditional spaces) and the RDB heartbeat are marked experimental; saying so
# on every trial helps no one.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Optuna warns on every `ask` from an RDB storage with a heartbeat outside `Study.optimize`;
# here the heartbeat is beaten by search.liveness.heartbeat instead of optimize's thread.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


class OptunaOracle(Reaper, kt.Oracle):
    """A Keras Tuner oracle asking an Optuna study for values and telling it results."""

    def __init__(self, search: Search, seed: int, **common: Any):
        super().__init__(max_trials=search.max_trials, seed=seed, **common)
        options = typed_options(search)
        self.storage_url: str | None = options.storage
        self.study_name: str | None = options.study
        self.heartbeat_interval = float(options.heartbeat_interval)
        self.grace_period = options.grace
        self.search, self.base_seed, self.sampler_options = search, seed, options.sampler
        self.metric = search.objective
        self.multi = search.minimize is not None
        from search import metrics

        first = "minimize" if metrics.direction(self.metric) == "min" else "maximize"
        self.directions = [first] + (["minimize"] if self.multi else [])
        make_sampler(search.algorithm, seed, search.max_trials, options.sampler)  # fail on a bad value now
        # Optuna prunes single-objective studies only.
        self.pruner = make_pruner("none" if self.multi else options.pruner, search.epochs, options.pruner_options)
        self.worker = workers.this_worker()
        self._study: optuna.Study | None = None
        self.folder: SpaceDir | None = None
        self.recovered: list[int] = []  # study trials told their recorded result on this start
        # Set by the tuner: reports a trial told from its record (it reached no hook before).
        self.on_recovered: Callable[[dict[str, Any]], None] = lambda record: None
        # Called with a trial's id when this worker finds the trial's own worker dead.
        self.on_lost: Callable[[str], None] = lambda trial_id: None
        self._asked: dict[str, optuna.Trial] = {}
        self._pruned: set[str] = set()
        self._results: dict[str, TrialResult] = {}
        self._heartbeat: Heartbeat | None = None
        self._rdb = bool(self.storage_url and "://" in self.storage_url)
        self._rdb_storage: optuna.storages.RDBStorage | None = None
        self._claims: Claims | None = None

    # Where the study lives ------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            raise RuntimeError("the oracle has no study before the tuner sets its project folder")
        return self._study

    @property
    def tuner_project(self) -> str:
        """Keras Tuner's own state, per worker process: the Optuna study is the shared one."""
        return f"tuner/{self.worker.host}-{self.worker.pid}"

    @property
    def name(self) -> str:
        assert self.folder is not None
        return self.study_name or self.folder.name

    @property
    def storage(self) -> str:
        """The storage as the heartbeat process and claims open it (may hold a password)."""
        assert self.folder is not None
        return storage_for_children(self.storage_url, self.folder.path)

    def open(self, directory: Path) -> None:
        """Open (or create) the study of the search in the runs folder `directory`; Keras
        Tuner's bookkeeping of this worker's trials goes to its `tuner_project` there."""
        compat.set_project_dir(self, directory, self.tuner_project)
        self.folder = SpaceDir(Path(directory))
        where = redact(self.storage_url) if self.storage_url else str(self.folder.journal)
        storage = open_storage(self.storage_url, self.folder.path, heartbeat_interval=self.heartbeat_interval,
                               grace_period=self.grace_period)
        # An RDB storage with Optuna's heartbeat (not SQLite, not the journal file).
        beats = isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None
        self._rdb_storage = storage if isinstance(storage, optuna.storages.RDBStorage) and beats else None
        self._claims = Claims(storage_for_children(self.storage_url, self.folder.path))
        try:
            self._study = self._storage_call(lambda: optuna.create_study(
                study_name=self.name, storage=storage, pruner=self.pruner,
                sampler=make_sampler(self.search.algorithm, self.base_seed, self.search.max_trials, self.sampler_options),
                directions=[optuna.study.StudyDirection[d.upper()] for d in self.directions], load_if_exists=True,
            ))
        except ValueError as e:
            raise SearchError(f"Optuna study {self.name!r} in {where}: {redact(str(e))}. "
                              "Pass --study NAME for a new study.") from None
        directions = self._storage_call(lambda: self.study.directions)
        if [d.name.lower() for d in directions] != self.directions:
            raise SearchError(
                f"Optuna study {self.name!r} in {where} optimizes {[d.name.lower() for d in directions]}, "
                f"this search {self.directions} (Search.minimize changed?); pass --study NAME or --fresh.")
        # optuna-dashboard shows these instead of "Objective 0".
        names = [self.metric] + ([str(self.search.minimize)] if self.multi else [])
        if self._storage_call(lambda: self.study.metric_names) != names:
            self._storage_call(lambda: self.study.set_metric_names(names))

    # Trials -------------------------------------------------------------------------
    def create_trial(self, tuner_id: str) -> kt.engine.trial.Trial:
        if tuner_id in self.ongoing_trials:
            return self.ongoing_trials[tuner_id]
        asked = self._ask()
        if asked is None:
            self.stop_heartbeat()
            return kt.engine.trial.Trial(self.hyperparameters.copy(), status=TrialStatus.STOPPED)
        trial_id = f"{asked.number:04d}"
        self._asked[trial_id] = asked
        hyperparameters = self.hyperparameters.copy()
        hyperparameters.values = self.populate_space(trial_id)["values"]
        trial = kt.engine.trial.Trial(hyperparameters, trial_id=trial_id, status=TrialStatus.RUNNING)
        compat.start_trial(self, tuner_id, trial)
        return trial

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        asked = self._asked[trial_id]  # the sampler reads the study and writes each value to it
        return {"status": TrialStatus.RUNNING, "values": self._storage_call(lambda: suggest(asked, self.hyperparameters))}

    def restore(self, records: list[dict[str, Any]]) -> int:
        """Add to a study that lost them (a journal deleted or replaced) the ended trials whose
        records are in trials/, in their order, so their numbers and ids are taken again and
        none runs again. Once, under a claim, whichever workers start at that moment."""
        trials = self._trials()
        known = {str(t.user_attrs.get("kt_trial_id")) for t in trials}
        missing = sorted((r for r in records if r["status"] in ENDED and r["trial_id"] not in known),
                         key=lambda r: r["trial_id"])
        if not missing or trials:
            return 0  # a study that holds trials holds every trial its workers asked for
        claims = self._claims
        assert claims is not None
        won, _ = self._storage_call(lambda: claims.claim(f"{self.name}:restore", stale_after=self.grace_period))
        if not won:
            return 0
        for record in missing:
            values = self._values(record)
            state = (TrialState.COMPLETE if values is not None else
                     TrialState.PRUNED if record["status"] == PRUNED and not self.multi else TrialState.FAIL)
            chosen = dict(record.get("values") or {})
            found = distributions(self.hyperparameters, chosen)
            frozen = optuna.trial.create_trial(
                state=state, values=values if state == TrialState.COMPLETE else None,
                params={k: chosen[k] for k in found}, distributions=found,
                user_attrs={"kt_trial_id": record["trial_id"], "restored": True})
            self._storage_call(lambda: self.study.add_trial(frozen))
        self._storage_call(lambda: claims.finish(f"{self.name}:restore"))
        return len(missing)

    def finished_count(self) -> int:
        """The study's trials that ended and count towards max_trials (all workers)."""
        trials = self._trials()
        return sum(1 for t in counted(trials) if t.state.is_finished())

    def completed_count(self) -> int:
        """The study's trials that ended with a result (complete or pruned), whichever worker ran them."""
        return sum(1 for t in self._trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED))

    def _ask(self) -> optuna.Trial | None:
        """The next trial of the study, or None when the study has all its trials."""
        while True:
            self.reap()
            trials = self._trials()
            budget = counted(trials)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if len(budget) >= self.search.max_trials and not waiting:
                if not any(t.state == TrialState.RUNNING for t in trials):
                    return None
                self._keep_alive()
                time.sleep(min(self.heartbeat_interval, 5.0))  # another worker's trial may still die
                interrupts.check()
                continue
            trial = self._storage_call(self.study.ask)
            faults.point("asked")
            # A new sampler per trial: stateless across trials, seeded by the trial's number, so a
            # resumed search does not replay the same values, and neither do workers that asked at
            # the same instant (they saw the same trials, but got different numbers). Optuna
            # samples at the first suggestion, after the ask.
            self.study.sampler = make_sampler(self.search.algorithm, self.base_seed * 1000 + trial.number,
                                              self.search.max_trials, self.sampler_options)
            self._storage_call(lambda: trial.set_user_attr("worker", self.worker.record()))
            self._storage_call(lambda: trial.set_user_attr("heartbeat", time.time()))
            rdb = self._rdb_storage
            if rdb is not None:
                # Optuna never takes a trial without a heartbeat row for stale: beaten first
                # here, so a worker killed before its heartbeat process beats is still noticed.
                self._storage_call(lambda: rdb.record_heartbeat(compat.trial_id(trial)))
            self._storage_call(lambda: trial.set_user_attr("kt_trial_id", f"{trial.number:04d}"))
            trials = self._trials()
            frozen = next(t for t in trials if t.number == trial.number)
            recovered = {t.system_attrs["recovers"] for t in trials if "recovers" in t.system_attrs}
            origin = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
            in_budget = [t.number for t in counted(trials)].index(trial.number) < self.search.max_trials
            if in_budget and (origin is None or origin not in recovered):
                self._asked[f"{trial.number:04d}"] = trial
                self._keep_alive()
                return trial
            # Several workers asked for the last trial at once (the lowest numbers win), or
            # this retry's trial was recovered from its record meanwhile.
            self._storage_call(lambda: trial.set_user_attr("surplus", True))
            tell(self.study, trial, state=TrialState.FAIL)

    def _keep_alive(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.storage, self.heartbeat_interval)
        self._heartbeat.beat([compat.trial_id(t) for t in self._asked.values()])

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    # Other workers' trials ------------------------------------------------------------

    # What the source asks and tells -------------------------------------------------
    def trial_number(self, trial_id: str) -> int:
        return int(trial_id) + 1

    def runs_again(self, trial_id: str) -> tuple[str, ...]:
        """The ids of the trials a retried trial runs again (a dead worker's), oldest first."""
        number = self._asked[trial_id].number
        frozen = next(t for t in self._trials() if t.number == number)
        return tuple(f"{n:04d}" for n in RetryHeartbeatStaleTrialCallback.retry_history(frozen))

    def report(self, trial_id: str, epoch: int, logs: dict[str, float]) -> bool:
        """Report the objective after an epoch (0-based); True when the pruner stops the trial."""
        trial = self._asked.get(trial_id)
        value = logs.get(self.metric)
        if trial is None or self.multi or value is None or not math.isfinite(value):
            return False
        try:
            self._storage_call(lambda: trial.report(float(value), epoch + 1))
        except optuna.exceptions.UpdateFinishedTrialError:
            raise kt.errors.FailedTrialError(
                f"another worker took Optuna trial {trial.number} for dead (no heartbeat for "
                f"{self.grace_period:.0f}s) and queued it again; on a busy machine raise "
                "Search(options={'grace_period': ...})") from None
        if epoch + 1 < self.search.epochs and self._storage_call(trial.should_prune):
            self._pruned.add(trial_id)
            return True
        return False

    def record_result(self, trial_id: str, result: TrialResult) -> None:
        """The result `end_trial` tells the study."""
        self._results[trial_id] = result

    def end_trial(self, trial: kt.engine.trial.Trial) -> None:
        asked = self._asked.pop(trial.trial_id, None)
        result = self._results.pop(trial.trial_id, None)
        if asked is not None:
            try:
                self._tell(asked, trial, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                print(f"warning: Optuna trial {asked.number} was ended by another worker before this one told "
                      "its result; its record stays in trials/.", flush=True)
            except Exception as e:  # noqa: BLE001 - the record is written: the next start tells it
                print(f"warning: could not tell Optuna trial {asked.number}'s result "
                      f"({type(e).__name__}: {redact(str(e).splitlines()[0] if str(e) else '')}); the next start "
                      "of this search tells it from the trial's record.", flush=True)
            self._keep_alive()
        super().end_trial(trial)

    def _tell(self, asked: optuna.Trial, trial: kt.engine.trial.Trial, result: TrialResult | None) -> None:
        from search.tracking import study  # the record's summary, kept in the study

        kept = study.summary_of(self.folder.trial(trial.trial_id)) if self.folder is not None else None
        if kept is not None:
            self._storage_call(lambda: asked.set_user_attr(study.RECORD_ATTR, kept))
        if trial.trial_id in self._pruned or (result is not None and result.status == PRUNED):
            tell(self.study, asked, state=TrialState.PRUNED)  # the pruner's, or Search(fine_tune_best)'s rung
            return
        value = result.best.get(self.metric) if result else None
        if trial.status != TrialStatus.COMPLETED or value is None or not math.isfinite(value):
            tell(self.study, asked, state=TrialState.FAIL)
            return
        values = [value]
        if self.multi:
            assert result is not None
            second = result.best.get("latency_ms") if self.search.minimize == "latency_ms" else getattr(
                result, str(self.search.minimize))
            if second is None:
                tell(self.study, asked, state=TrialState.FAIL)
                return
            values.append(float(second))
        tell(self.study, asked, values)
