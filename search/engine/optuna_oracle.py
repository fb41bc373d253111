"""Optuna behind Keras Tuner: its samplers, pruners and shared storage drive the same `hp` space.

`OptunaOracle` is a Keras Tuner oracle whose values come from an Optuna study (`study.ask()`),
so space files, the tuner and every hook stay as they are. The study lives in a storage that
many workers can share: by default a journal file `runs/<space>/optuna.journal`, or any
`--storage URL`. A trial's id is its study trial number (zero-padded), unique across workers.

Workers that die: each running trial carries its worker (`search.liveness.workers.Worker`) and
a heartbeat, beaten by a process of its own (`search.liveness.heartbeat`): Optuna's heartbeat
on an RDB storage, a user attribute on the journal. A running trial is failed and queued
again with the same values (Optuna's `RetryHeartbeatStaleTrialCallback`) by whichever
worker sees first that its worker is dead (its process is gone, where process ids can be
compared), or that its heartbeat is older than `grace_period` when the worker is elsewhere.
A worker known to be alive is never failed, however late its heartbeat. A trial whose
record (trials/<id>/result.json) says it ended is told that result instead of being run
again. Workers stay until the study's last trial ends, so no trial is left behind.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search import compat
from search.declare import Search
from search.engine import interrupts
from search.liveness.claims import Claims
from search.liveness.heartbeat import Heartbeat
from search.engine.hooks import PRUNED, TrialResult
from search.errors import SearchError
from search.redaction import redact
from search.liveness import workers
from search.runs import faults
from search.runs.layout import SpaceDir

PRUNERS = ("median", "hyperband", "successive_halving", "none")
TrialStatus = kt.engine.trial.TrialStatus
optuna.logging.set_verbosity(optuna.logging.WARNING)
# TPE's `group` (conditional spaces) and the RDB heartbeat are marked experimental; saying so
# on every trial helps no one.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Optuna warns on every `ask` from an RDB storage with a heartbeat outside `Study.optimize`;
# here the heartbeat is beaten by search.liveness.heartbeat instead of optimize's thread.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
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
# Storage errors worth a retry: a lost connection, a lock, a race creating tables.
_RETRIES = 5
# The Python driver each RDB URL form needs, and the package that provides it.
DRIVERS = {
    "postgresql": ("psycopg", "psycopg[binary]"),
    "postgresql+psycopg": ("psycopg", "psycopg[binary]"),
    "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mysql+pymysql": ("pymysql", "pymysql"),
}


def make_sampler(algorithm: str, seed: int, max_trials: int, options: dict[str, Any]) -> optuna.samplers.BaseSampler:
    if algorithm == "tpe":
        options = {"n_startup_trials": max(3, min(10, max_trials // 3)), "multivariate": True, "group": True,
                   **options}
        return optuna.samplers.TPESampler(seed=seed, **options)
    if algorithm == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise SearchError("algorithm 'cmaes' needs the `cmaes` package: pip install cmaes") from None
        # CMA-ES samples numbers; choices are sampled at random beside it (no warning each trial).
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **options)
    if algorithm == "gp":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise SearchError(
                "algorithm 'gp' needs PyTorch (Optuna's GPSampler runs on it): pip install torch, "
                "or use tpe or cmaes."
            ) from None
        return optuna.samplers.GPSampler(seed=seed, **options)
    if algorithm == "nsga2":
        options = {"population_size": max(4, min(50, max_trials // 3)), **options}
        return optuna.samplers.NSGAIISampler(seed=seed, **options)
    raise SearchError(f"algorithm {algorithm!r} is not an Optuna algorithm; use tpe, cmaes, gp or nsga2.")


def make_pruner(name: str, epochs: int, options: dict[str, Any]) -> optuna.pruners.BasePruner:
    if name == "median":
        # Steps are 1-based epochs: the first two epochs are never pruned.
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 3, "n_warmup_steps": 3, **options})
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": epochs, **options})
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**{"min_resource": 1, **options})
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SearchError(f"Search(options={{'pruner': {name!r}}}) is not a pruner; use one of {', '.join(PRUNERS)}.")


def suggest(trial: optuna.Trial, space: kt.HyperParameters) -> dict[str, Any]:
    """Values for the active hyperparameters of a Keras Tuner space, suggested by `trial`."""
    hps = kt.HyperParameters()
    for hp in space.space:
        hps.merge([hp])
        if not hps.is_active(hp):  # conditional on a parent value not chosen
            continue
        hps.values[hp.name] = _suggest_one(trial, hp)
    return dict(hps.values)


def _suggest_one(trial: optuna.Trial, hp: Any) -> Any:
    h = kt.engine.hyperparameters
    if isinstance(hp, h.Fixed):
        return hp.value
    if isinstance(hp, h.Boolean):
        return trial.suggest_categorical(hp.name, [True, False])
    if isinstance(hp, h.Choice):
        return trial.suggest_categorical(hp.name, list(hp.values))
    log = hp.sampling in ("log", "reverse_log")
    if log and hp.step is not None:  # Keras Tuner's log step is a factor: a geometric grid
        grid, value = [], hp.min_value
        while value <= hp.max_value * (1 + 1e-9):
            grid.append(value)
            value *= hp.step
        return trial.suggest_categorical(hp.name, grid)
    if isinstance(hp, h.Int):
        return trial.suggest_int(hp.name, hp.min_value, hp.max_value, step=hp.step or 1, log=log)
    if isinstance(hp, h.Float):
        value = trial.suggest_float(hp.name, hp.min_value, hp.max_value, step=hp.step, log=log)
        return round(value, 10) if hp.step else value
    raise SearchError(f"hyperparameter {hp.name!r}: {type(hp).__name__} cannot be translated to Optuna.")


def _driver_missing(url: str, error: BaseException) -> SearchError | None:
    """One line naming the package to install, for the ImportError of a missing database driver."""
    scheme = url.split("://", 1)[0].lower()
    # Optuna wraps SQLAlchemy's ImportError in one of its own that names no module.
    cause: BaseException | None = error
    while cause is not None and not getattr(cause, "name", None):
        cause = cause.__cause__
    missing = str(getattr(cause, "name", "") or "")
    if not isinstance(error, ImportError) or not missing:
        return None
    module, package = DRIVERS.get(scheme, (missing, None))
    if module.split(".")[0] != missing.split(".")[0]:
        return None
    if package is None:
        return SearchError(f"--storage {redact(url)}: the {scheme} driver is not installed (no module {missing!r}): "
                           f"pip install the package that provides {missing}.")
    other = " (or write postgresql+psycopg2://... with psycopg2-binary)" if scheme == "postgresql" else ""
    return SearchError(f"--storage {redact(url)}: the {scheme} driver is not installed: pip install '{package}'{other}.")


def open_storage(url: str | None, space_dir: Path, *, heartbeat_interval: float = 30,
                 grace_period: float = 120) -> optuna.storages.BaseStorage:
    """An RDB URL (postgresql://, mysql://, sqlite:///) or a journal file path; None: the space's journal.

    Workers that start at once on an empty database race to create Optuna's tables; the
    loser's error is retried, so every worker starts."""
    if not (url and "://" in url):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url) if url else SpaceDir(space_dir).journal
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_torn_tail(path)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    import sqlalchemy

    options: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        options = {"engine_kwargs": {"pool_pre_ping": True}, "heartbeat_interval": max(1, round(heartbeat_interval)),
                   "grace_period": max(1, round(grace_period)),
                   "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback()}
    for attempt in range(_RETRIES + 1):
        try:
            return optuna.storages.RDBStorage(url, **options)
        except ImportError as e:
            raise (_driver_missing(url, e) or e) from None
        except sqlalchemy.exc.ArgumentError as e:
            raise SearchError(f"--storage {redact(url)} is not a database URL SQLAlchemy knows ({e}); e.g. "
                              "postgresql://user:PASSWORD@host/db, or a journal file path.") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
            racing = isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in str(e) or "locked" in str(e)
            if not racing or attempt == _RETRIES:
                first = (str(getattr(e, "orig", e)).strip().splitlines() or [""])[0]
                raise SearchError(f"cannot open the Optuna storage {redact(url)}: {redact(first)}") from None
            time.sleep(random.uniform(0.1, 0.5) * (attempt + 1))
    raise AssertionError("unreachable")


def _repair_torn_tail(path: Path) -> None:
    """Cut a journal's last line when a write was cut short (a full disk, a power loss).

    Optuna skips such a line while reading but appends the next record right after it, which
    makes one line of two halves that no later read can parse: the whole study is then lost.
    The torn bytes are kept beside the journal; done under the journal's own lock, so no
    worker is appending at that moment."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as f:
        f.seek(-1, 2)
        if f.read(1) == b"\n":
            return
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut == len(data):
            return  # another worker repaired it first
        torn = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        torn.write_bytes(data[cut:])
        with path.open("r+b") as f:
            f.truncate(cut)
            os.fsync(f.fileno())
    finally:
        lock.release()
    print(f"warning: the last line of {path} was cut short by an interrupted write; it is kept in {torn.name} "
          "and the study goes on from the lines before it.", file=sys.stderr, flush=True)


def storage_for_children(url: str | None, space_dir: Path) -> str:
    """What the heartbeat process and claims open: the URL, or the journal file's path."""
    return url if url and "://" in url else str(Path(url) if url else SpaceDir(space_dir).journal)


class OptunaOracle(kt.Oracle):
    """A Keras Tuner oracle asking an Optuna study for values and telling it results."""

    def __init__(self, search: Search, seed: int, **common: Any):
        super().__init__(max_trials=search.max_trials, seed=seed, **common)
        options = dict(search.options)
        self.storage_url: str | None = options.pop("storage", None)
        self.study_name: str | None = options.pop("study", None)
        self.heartbeat_interval = float(options.pop("heartbeat_interval", 30))
        self.grace_period = float(options.pop("grace_period", 4 * self.heartbeat_interval))
        pruner = options.pop("pruner", "median")
        pruner_options = dict(options.pop("pruner_options", {}))
        self.search, self.base_seed, self.sampler_options = search, seed, options
        self.metric = search.objective
        self.multi = search.minimize is not None
        from search import metrics

        first = "minimize" if metrics.direction(self.metric) == "min" else "maximize"
        self.directions = [first] + (["minimize"] if self.multi else [])
        make_sampler(search.algorithm, seed, search.max_trials, options)  # fail on a bad setting now
        # Optuna prunes single-objective studies only.
        self.pruner = make_pruner("none" if self.multi else pruner, search.epochs, pruner_options)
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
        self._latency: dict[str, float] = {}
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

    def _set_project_dir(self, directory: str, project_name: str) -> None:
        super()._set_project_dir(directory, project_name)
        self.folder = SpaceDir(Path(directory))
        where = redact(self.storage_url) if self.storage_url else str(self.folder.journal)
        storage = open_storage(self.storage_url, self.folder.path, heartbeat_interval=self.heartbeat_interval,
                               grace_period=self.grace_period)
        # An RDB storage with Optuna's heartbeat (not SQLite, not the journal file).
        beats = isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None
        self._rdb_storage = storage if isinstance(storage, optuna.storages.RDBStorage) and beats else None
        self._claims = Claims(storage_for_children(self.storage_url, self.folder.path))
        try:
            self._study = optuna.create_study(
                study_name=self.name, storage=storage, pruner=self.pruner,
                sampler=make_sampler(self.search.algorithm, self.base_seed, self.search.max_trials, self.sampler_options),
                directions=[optuna.study.StudyDirection[d.upper()] for d in self.directions], load_if_exists=True,
            )
        except ValueError as e:
            raise SearchError(f"Optuna study {self.name!r} in {where}: {redact(str(e))}. "
                              "Pass --study NAME for a new study.") from None
        if [d.name.lower() for d in self.study.directions] != self.directions:
            raise SearchError(
                f"Optuna study {self.name!r} in {where} optimizes {[d.name.lower() for d in self.study.directions]}, "
                f"this search {self.directions} (Search.minimize changed?); pass --study NAME or --fresh.")
        # optuna-dashboard shows these instead of "Objective 0".
        names = [self.metric] + ([str(self.search.minimize)] if self.multi else [])
        if self.study.metric_names != names:
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
        self.ongoing_trials[tuner_id] = trial
        self.trials[trial_id] = trial
        self.start_order.append(trial_id)
        self._save_trial(trial)
        self.save()
        self._display.on_trial_begin(trial)
        return trial

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        return {"status": TrialStatus.RUNNING, "values": suggest(self._asked[trial_id], self.hyperparameters)}

    def finished_count(self) -> int:
        """The study's trials that ended and count towards max_trials (all workers)."""
        trials = self.study.get_trials(deepcopy=False)
        return sum(1 for t in counted(trials) if t.state.is_finished())

    def completed_count(self) -> int:
        """The study's trials that ended with a result (complete or pruned), whichever worker ran them."""
        return sum(1 for t in self.study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED))

    def _ask(self) -> optuna.Trial | None:
        """The next trial of the study, or None when the study has all its trials."""
        while True:
            self.reap()
            trials = self.study.get_trials(deepcopy=False)
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
            trials = self.study.get_trials(deepcopy=False)
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
            self._storage_call(lambda: self.study.tell(trial, state=TrialState.FAIL))

    def _keep_alive(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.storage, self.heartbeat_interval)
        self._heartbeat.beat([compat.trial_id(t) for t in self._asked.values()])

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    # Other workers' trials ------------------------------------------------------------
    def _record(self, trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
        from search.results.records import read_record

        kt_id = trial.user_attrs.get("kt_trial_id")
        if self.folder is None or not kt_id:
            return None
        record = read_record(self.folder.trial(str(kt_id)))
        return record if record and record["status"] in ("COMPLETED", PRUNED, "FAILED") else None

    def _values(self, record: dict[str, Any]) -> list[float] | None:
        best = record.get("best") or {}
        value = best.get(self.metric)
        if record["status"] == "FAILED" or value is None:
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
            if record["status"] == PRUNED and not self.multi:
                self._storage_call(lambda: self.study.tell(trial.number, state=TrialState.PRUNED))
            elif values is None:
                self._storage_call(lambda: self.study.tell(trial.number, state=TrialState.FAIL))
            else:
                self._storage_call(lambda: self.study.tell(trial.number, values))
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
        trials = self.study.get_trials(deepcopy=False)
        stale_ids = set(compat.stale_trial_ids(self.study)) if self._rdb else set()
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
                # Its worker died between asking for it and saying who it is, milliseconds apart:
                # no heartbeat will ever come, so its age is all there is to go by.
                if workers.beat_is_stale(started, min(self.grace_period, ORPHAN_AFTER)):
                    self._fail_and_requeue(t, None, "its worker died as it asked for it")
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
            self.study.tell(t.number, state=TrialState.FAIL)
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
        trials = self.study.get_trials(deepcopy=False)
        if number not in {n for x in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(x)}:
            failed = next(x for x in trials if x.number == number)
            self._storage_call(lambda: RetryHeartbeatStaleTrialCallback()(self.study, failed))
        self._storage_call(lambda: claims.finish(key))
        return True

    def _storage_call(self, call: Callable[[], Any]) -> Any:
        """A storage call, retried on the errors a shared database or file can give for a moment."""
        for attempt in range(_RETRIES + 1):
            try:
                return call()
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError, KeyError):
                raise
            except Exception:  # noqa: BLE001 - a lost connection, a lock timeout, a full disk for a moment
                if attempt == _RETRIES:
                    raise
                time.sleep(0.2 * 2**attempt + random.uniform(0, 0.2))

    # What the tuner asks and tells --------------------------------------------------
    def trial_number(self, trial_id: str) -> int:
        return int(trial_id) + 1

    def keras_callbacks(self, trial_id: str) -> list[keras.callbacks.Callback]:
        return [_ReportCallback(self, trial_id)]

    def trial_status(self, trial_id: str) -> str | None:
        return PRUNED if trial_id in self._pruned else None

    def record_result(self, trial_id: str, result: TrialResult) -> None:
        """Called by the tuner before the trial's record is written: adds what this oracle measured."""
        if trial_id in self._latency:
            result.best["latency_ms"] = self._latency.pop(trial_id)
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
        from search.results import study  # the record's summary, kept in the study (results sits above engine)

        kept = study.summary_of(self.folder.trial(trial.trial_id)) if self.folder is not None else None
        if kept is not None:
            self._storage_call(lambda: asked.set_user_attr(study.RECORD_ATTR, kept))
        if trial.trial_id in self._pruned:
            self._storage_call(lambda: self.study.tell(asked, state=TrialState.PRUNED))
            return
        value = result.best.get(self.metric) if result else None
        if trial.status != TrialStatus.COMPLETED or value is None or not math.isfinite(value):
            self._storage_call(lambda: self.study.tell(asked, state=TrialState.FAIL))
            return
        values = [value]
        if self.multi:
            assert result is not None
            second = result.best.get("latency_ms") if self.search.minimize == "latency_ms" else getattr(
                result, str(self.search.minimize))
            if second is None:
                self._storage_call(lambda: self.study.tell(asked, state=TrialState.FAIL))
                return
            values.append(float(second))
        self._storage_call(lambda: self.study.tell(asked, values))


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that use up the budget: all but the failed ones that were queued again or
    recovered from their record, and surplus asks."""
    replaced = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    replaced |= {t.system_attrs["recovers"] for t in trials if "recovers" in t.system_attrs}
    return [t for t in trials
            if not (t.state == TrialState.FAIL and (t.number in replaced or t.user_attrs.get("surplus")))]


class _ReportCallback(keras.callbacks.Callback):
    """Reports the objective after each epoch; stops training when the pruner says so."""

    def __init__(self, oracle: OptunaOracle, trial_id: str):
        super().__init__()
        self.oracle, self.trial_id = oracle, trial_id

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        trial = self.oracle._asked.get(self.trial_id)
        value = (logs or {}).get(self.oracle.metric)
        if trial is None or self.oracle.multi or value is None or not math.isfinite(value):
            return
        try:
            trial.report(float(value), epoch + 1)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise kt.errors.FailedTrialError(
                f"another worker took Optuna trial {trial.number} for dead (no heartbeat for "
                f"{self.oracle.grace_period:.0f}s) and queued it again; on a busy machine raise "
                "Search(options={'grace_period': ...})") from None
        if epoch + 1 < self.oracle.search.epochs and trial.should_prune():
            self.oracle._pruned.add(self.trial_id)
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.oracle.search.minimize == "latency_ms":  # after EarlyStopping restored the best weights
            from search.results.pareto import latency_ms

            self.oracle._latency[self.trial_id] = latency_ms(self.model)
