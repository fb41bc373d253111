"""Optuna behind Keras Tuner: its samplers, pruners and shared storage drive the same `hp` space.

`OptunaOracle` is a Keras Tuner oracle whose values come from an Optuna study (`study.ask()`),
so space files, the tuner and every hook stay as they are. The study lives in a storage that
many workers can share: by default a journal file `runs/<space>/optuna.journal`, or any
`--storage URL`. A trial's KT id is its Optuna number (zero-padded), unique across workers.

Dead workers: each running trial carries its worker (`host:pid`) and a heartbeat (user attrs).
A RUNNING trial whose worker is gone (same host, no such pid) or whose heartbeat is older than
`grace_period` is failed and re-queued with the same values by whichever worker sees it first.
Workers stay until the study's last trial ends, so such a trial is never left behind.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import optuna
from keras_tuner.src.engine import trial as trial_module
from optuna.trial import TrialState

from search.declare import Search
from search.errors import SearchError
from search.hooks import PRUNED, TrialResult

PRUNERS = ("median", "hyperband", "successive_halving", "none")
RUNNING_STATES = (TrialState.RUNNING, TrialState.WAITING)
optuna.logging.set_verbosity(optuna.logging.WARNING)
# TPE's `group` (conditional spaces) is marked experimental; saying so on every trial helps no one.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_oracle(search: Search, seed: int, **common: Any) -> OptunaOracle:
    """The oracle for an Optuna algorithm (tpe, cmaes, gp, nsga2); `common` as Keras Tuner's."""
    return OptunaOracle(search, seed, **common)


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


def open_storage(url: str | None, space_dir: Path) -> optuna.storages.BaseStorage:
    """An RDB URL (postgresql://, mysql://, sqlite:///) or a journal file path; None: the space's journal."""
    if url and "://" in url:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else {})
    from optuna.storages.journal import JournalFileBackend

    path = Path(url) if url else space_dir / "optuna.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


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
        self.directions = ["minimize" if "loss" in self.metric else "maximize"] + (["minimize"] if self.multi else [])
        make_sampler(search.algorithm, seed, search.max_trials, options)  # fail on a bad setting now
        # Optuna prunes single-objective studies only.
        self.pruner = make_pruner("none" if self.multi else pruner, search.epochs, pruner_options)
        # host:pid:token; the token tells a restarted container (same host, same pid) from its predecessor.
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.study: optuna.Study | None = None
        self._asked: dict[str, optuna.Trial] = {}
        self._pruned: set[str] = set()
        self._results: dict[str, TrialResult] = {}
        self._latency: dict[str, float] = {}
        self._beating = threading.Event()
        self._beat_thread: threading.Thread | None = None

    # Where the study lives ------------------------------------------------------------
    @property
    def tuner_project(self) -> str:
        """Keras Tuner's own state, per worker process: the Optuna study is the shared one."""
        return f"tuner/{socket.gethostname()}-{os.getpid()}"

    def _set_project_dir(self, directory: str, project_name: str) -> None:
        super()._set_project_dir(directory, project_name)
        space_dir = Path(directory)
        name = self.study_name or space_dir.name
        try:
            self.study = optuna.create_study(
                study_name=name, storage=open_storage(self.storage_url, space_dir), pruner=self.pruner,
                sampler=make_sampler(self.search.algorithm, self.base_seed, self.search.max_trials, self.sampler_options),
                directions=self.directions, load_if_exists=True,
            )
        except ValueError as e:
            raise SearchError(f"Optuna study {name!r} in {self.storage_url or space_dir / 'optuna.journal'}: {e}. "
                              "Pass --study NAME for a new study.") from None
        if [d.name.lower() for d in self.study.directions] != self.directions:
            raise SearchError(
                f"Optuna study {name!r} optimizes {[d.name.lower() for d in self.study.directions]}, this search "
                f"{self.directions} (Search.minimize changed?); pass --study NAME or --fresh.")

    # Trials -------------------------------------------------------------------------
    def create_trial(self, tuner_id: str) -> trial_module.Trial:
        if tuner_id in self.ongoing_trials:
            return self.ongoing_trials[tuner_id]
        asked = self._ask()
        if asked is None:
            return trial_module.Trial(self.hyperparameters.copy(), status=trial_module.TrialStatus.STOPPED)
        trial_id = f"{asked.number:04d}"
        self._asked[trial_id] = asked
        hyperparameters = self.hyperparameters.copy()
        hyperparameters.values = self.populate_space(trial_id)["values"]
        trial = trial_module.Trial(hyperparameters, trial_id=trial_id, status=trial_module.TrialStatus.RUNNING)
        self.ongoing_trials[tuner_id] = trial
        self.trials[trial_id] = trial
        self.start_order.append(trial_id)
        self._save_trial(trial)
        self.save()
        self._display.on_trial_begin(trial)
        return trial

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        return {"status": trial_module.TrialStatus.RUNNING, "values": suggest(self._asked[trial_id], self.hyperparameters)}

    def _ask(self) -> optuna.Trial | None:
        """The next trial of the study, or None when the study has all its trials."""
        assert self.study is not None
        while True:
            self._fail_stale()
            trials = self.study.get_trials(deepcopy=False)
            counted = _counted(trials)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if len(counted) >= self.search.max_trials and not waiting:
                if not any(t.state == TrialState.RUNNING for t in trials):
                    return None
                time.sleep(min(self.heartbeat_interval, 5.0))  # another worker's trial may still die
                continue
            # A new sampler per trial: stateless across trials, seeded by position, so a resumed
            # search and parallel workers do not replay the same values.
            self.study.sampler = make_sampler(self.search.algorithm, self.base_seed * 1000 + len(trials),
                                              self.search.max_trials, self.sampler_options)
            trial = self.study.ask()
            trial.set_user_attr("worker", self.worker)
            trial.set_user_attr("heartbeat", time.time())
            trial.set_user_attr("kt_trial_id", f"{trial.number:04d}")
            counted = _counted(self.study.get_trials(deepcopy=False))
            if [t.number for t in counted].index(trial.number) < self.search.max_trials:
                self._start_heartbeat()
                return trial
            # Several workers asked for the last trial at once: the lowest numbers win.
            trial.set_user_attr("surplus", True)
            self.study.tell(trial, state=TrialState.FAIL)

    def _fail_stale(self) -> None:
        assert self.study is not None
        host = socket.gethostname()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = str(t.user_attrs.get("worker", ""))
            beat = float(t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else time.time()))
            owner_host, _, pid = (worker.split(":") + ["", ""])[:3]
            dead = owner_host == host and pid.isdigit() and not _alive(int(pid))
            if worker == self.worker or not (dead or time.time() - beat > self.grace_period):
                continue
            try:
                self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                continue  # another worker failed it first, and re-queues it
            self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            print(f"Optuna trial {t.number} of worker {worker or '?'} stopped beating: failed, and queued again.",
                  flush=True)

    def _start_heartbeat(self) -> None:
        if self._beat_thread is None:
            self._beat_thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")
            self._beat_thread.start()

    def _beat(self) -> None:
        while not self._beating.wait(self.heartbeat_interval):
            for trial in list(self._asked.values()):
                try:
                    trial.set_user_attr("heartbeat", time.time())
                except Exception:  # noqa: BLE001 - ended meanwhile; a storage hiccup retries next beat
                    pass

    # What the tuner asks and tells --------------------------------------------------
    def trial_number(self, trial_id: str) -> int:
        return int(trial_id) + 1

    def keras_callbacks(self, trial_id: str) -> list[keras.callbacks.Callback]:
        return [_ReportCallback(self, trial_id)]

    def trial_status(self, trial_id: str) -> str | None:
        return PRUNED if trial_id in self._pruned else None

    def record_result(self, trial_id: str, result: TrialResult) -> None:
        """Called by the tuner before the trial's hooks: adds what this oracle measured (latency_ms)."""
        if trial_id in self._latency:
            result.best["latency_ms"] = self._latency.pop(trial_id)
        self._results[trial_id] = result

    def end_trial(self, trial: trial_module.Trial) -> None:
        asked = self._asked.pop(trial.trial_id, None)
        result = self._results.pop(trial.trial_id, None)
        if asked is not None:
            try:
                self._tell(asked, trial, result)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError) as e:
                print(f"warning: could not tell Optuna trial {asked.number}'s result ({e}); "
                      "another worker may have failed it as stale.", flush=True)
        super().end_trial(trial)

    def _tell(self, asked: optuna.Trial, trial: trial_module.Trial, result: TrialResult | None) -> None:
        assert self.study is not None
        if trial.trial_id in self._pruned:
            self.study.tell(asked, state=TrialState.PRUNED)
            return
        value = result.best.get(self.metric) if result else None
        if trial.status != trial_module.TrialStatus.COMPLETED or value is None or not math.isfinite(value):
            self.study.tell(asked, state=TrialState.FAIL)
            return
        values = [value]
        if self.multi:
            assert result is not None
            second = result.best.get("latency_ms") if self.search.minimize == "latency_ms" else getattr(
                result, str(self.search.minimize))
            if second is None:
                self.study.tell(asked, state=TrialState.FAIL)
                return
            values.append(float(second))
        self.study.tell(asked, values)


def _counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that use up the budget: all but those re-queued after their worker died and surplus asks."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return [t for t in trials if not (t.state == TrialState.FAIL and (t.number in retried or t.user_attrs.get("surplus")))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            from search.pareto import latency_ms

            self.oracle._latency[self.trial_id] = latency_ms(self.model)
