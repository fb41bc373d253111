"""One search, from a loaded space to how it ended: `run_search`.

Everything is checked before anything is deleted or trained: the space (loaded by the
caller), the data, the runs folder's lock, a resumed search's record (same data, seed,
algorithm and study), the Optuna storage. Only then does `fresh=True` remove the previous
search, and the trials run.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from search.data.dataset import ImageData, open_data
from search.engine import interrupts, oracles, strategy as strategies
from search.engine.budget import Budget, BudgetSpent, parse
from search.core.hooks import HookList, SearchHooks, SearchInfo
from search.core.status import COMPLETED, FAILED, KILLED, PRUNED, STOPPED
from search.engine.progress import ConsoleProgress
from search.engine.factory import check_options, make_source, shares_folder, study_name
from search.engine.source import TooManyFailures
from search.engine.tuner import DamagedState, Recycle, SpaceTuner
from search.errors import SearchError
from search.models import build
from search.redaction import redact, redact_all
from search.results import records
from search.runs import atomic, diskfull
from search.results.best import follow_records
from search.runs.layout import SpaceDir
from search.runs.locks import FolderLock, LockBusy
from search.space import Space

RECYCLE = "RECYCLE"


@dataclasses.dataclass
class Outcome:
    status: str  # COMPLETED, FAILED, KILLED, or RECYCLE (stopped to go on in a fresh process)
    space_dir: Path
    table: pd.DataFrame
    message: str = ""
    # Optuna: the study's storage and name, for the one promotion of a shared study.
    storage: str | None = None
    study: str | None = None

    @property
    def exit_code(self) -> int:
        return {COMPLETED: 0, STOPPED: 0, FAILED: 1, KILLED: 130, RECYCLE: 0}[self.status]

    @property
    def finished(self) -> int:
        if self.table.empty:
            return 0
        return int(self.table["status"].isin([COMPLETED, PRUNED]).sum())


def recorded_settings(search: Any) -> dict[str, Any]:
    """The Search settings as search.json and MLflow record them: no secrets."""
    return redact_all(dataclasses.asdict(search))


def _study_name(space: Space) -> str | None:
    return study_name(space.search, space.name)


def check_resume(space: Space, folder: SpaceDir, fingerprint: dict[str, Any]) -> None:
    """SearchError when resuming `folder` with this space would mix two searches' results."""
    if not folder.record.exists():
        return
    try:
        previous = json.loads(folder.record.read_text())
    except (OSError, ValueError):
        return  # damaged: rewritten below from this search, whose trials it must describe
    if previous.get("data", {}).get("content_hash") != fingerprint.get("content_hash"):
        raise SearchError(
            f"{folder.path} holds a search on other data ({previous.get('data', {}).get('root')}); "
            "resuming would mix results. Pass --fresh to start over, or --runs-dir DIR to keep both."
        )
    if previous.get("seed") != space.search.seed:
        raise SearchError(
            f"{folder.path} was searched with --seed {previous.get('seed')}, not {space.search.seed}; "
            "pass the same seed to resume, or --fresh to start over."
        )
    before = previous.get("settings", {}).get("algorithm")
    if before and before != space.search.algorithm:
        raise SearchError(
            f"{folder.path} was searched with --algorithm {before}, not {space.search.algorithm}; pass "
            f"--algorithm {before} to resume, --fresh to start over, or --runs-dir DIR to keep both."
        )
    before_folds = previous.get("settings", {}).get("folds")
    if before_folds != space.search.folds:
        raise SearchError(
            f"{folder.path} was searched with folds={before_folds}, not {space.search.folds}: their scores and "
            "val probabilities differ in kind. Pass --fresh to start over, or --runs-dir DIR to keep both."
        )
    study = previous.get("study")
    if study and study != _study_name(space):
        raise SearchError(
            f"{folder.path} holds the trials of Optuna study {study!r}, not {_study_name(space)!r}: its trial "
            f"folders would be mixed up. Pass --study {study} to resume it, or --runs-dir DIR for the new study."
        )


def _delete_study(space: Space, folder: SpaceDir) -> None:
    """--fresh with a shared --storage: delete that study, unless a worker is running one of its trials."""
    import optuna

    from search.engine import optuna_storage
    from search.liveness import claims

    url = space.search.options.get("storage")
    name = _study_name(space)
    if not url or not name:
        return
    storage = optuna_storage.open_storage(url, folder.path)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return  # no such study yet
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if running:
        raise SearchError(
            f"--fresh: study {name!r} in {redact(url)} has {len(running)} running trial(s) (other workers); stop "
            f"them first, or delete the study yourself: optuna delete-study --study-name {name} --storage URL"
        )
    print(f"--fresh: deleting Optuna study {name!r} ({len(study.trials)} trials) in {redact(url)}.", flush=True)
    optuna.delete_study(study_name=name, storage=storage)
    claims.Claims(optuna_storage.storage_for_children(url, folder.path)).forget(f"{name}:")


def _write_record(space: Space, folder: SpaceDir, fingerprint: dict[str, Any]) -> None:
    record = {
        "space": str(space.path), "space_sha256": space.sha256, "seed": space.search.seed,
        "settings": recorded_settings(space.search), "fixed": dict(space.fixed), "data": fingerprint,
    }
    if _study_name(space):
        record["study"] = _study_name(space)
    atomic.write_json(folder.record, record)


def _write_skipped(data: ImageData, folder: SpaceDir) -> None:
    """skipped.csv: every file left out of the data, with the reason (the console shows a few)."""
    if data.skipped:
        table = pd.DataFrame(data.skipped, columns=["file", "reason"])
        atomic.write_with(folder.skipped, lambda tmp: table.to_csv(tmp, index=False))
    else:
        folder.skipped.unlink(missing_ok=True)


def _lock(space: Space, folder: SpaceDir, fresh: bool) -> FolderLock:
    """Keras Tuner searches own their runs folder; Optuna workers of one study share it."""
    shared = shares_folder(space.search) and not fresh
    lock = FolderLock(folder.search_lock, doing=f"search.run {space.path} ({space.search.algorithm})", shared=shared)
    try:
        return lock.acquire()
    except LockBusy as e:
        if fresh:
            how = "--fresh needs it to itself: stop the other processes first"
        elif shared:
            how = "a Keras Tuner search owns it: wait for it to end, or pass --runs-dir DIR"
        else:
            how = ("Keras Tuner algorithms run one process per runs folder: wait for it to end, pass --runs-dir DIR, "
                   "or use an Optuna algorithm (--algorithm tpe) to share one search among workers")
        raise SearchError(f"{e}; {how}.") from None


def _common_error(errors: list[str]) -> str:
    if not errors:
        return "no trial ran"
    text, count = collections.Counter(errors).most_common(1)[0]
    return f"{count} of {len(errors)} with: {text}" if len(errors) > 1 else text


def _open_tuner(space: Space, data: ImageData, info: SearchInfo, hooks: HookList, strategy: Any, *, verbose: int,
                trials_per_process: int | None, budget: Budget | None) -> SpaceTuner:
    """The loop, its source's state reloaded; rebuilt from the trial records when that state
    cannot be read. A mistake of the user's (an option, the space) is raised as it is: only an
    error reading the state moves it aside. Whenever trials/ holds records the source does not
    know, it is given them, so no recorded trial runs again."""
    def make() -> SpaceTuner:
        return SpaceTuner(space, data, info, hooks, strategy, make_source(space.search, space.search.seed),
                          verbose=verbose, trials_per_process=trials_per_process, budget=budget)

    folder = SpaceDir(info.space_dir)
    try:
        tuner = make()
    except DamagedState as e:
        state = folder.path / make_source(space.search, space.search.seed).project
        aside = state.with_name(f"{state.name}.damaged-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        state.rename(aside)
        tuner = make()
        replayed = tuner.restore()
        print(f"warning: Keras Tuner's state in {state} could not be read ({e}); rebuilt it "
              f"from {replayed} trial record(s) (the damaged copy is in {aside}).", file=sys.stderr, flush=True)
        return tuner
    replayed = tuner.restore()
    if replayed:  # the state lost (deleted, replaced, an older crash) while trials/ kept their records
        print(f"warning: the search's state (Keras Tuner's {folder.tuner.name}/, or the Optuna study) did not know "
              f"{replayed} trial(s) recorded in {folder.trials}; it was given them from their records, and they are "
              "not run again.", file=sys.stderr, flush=True)
    return tuner


def run_search(space: Space, *, runs_dir: Path = Path("runs"), fresh: bool = False, verbose: int = 2,
               hooks: Sequence[SearchHooks] = (), tracking: bool = True, recycle: bool = False) -> Outcome:
    """Run or resume `space`'s search; returns how it ended and the trials table.

    `tracking=False` leaves MLflow out whatever mlflow.yaml says. `recycle=True` stops after
    the space's `trials_per_process` trials with status RECYCLE, the search still open, for
    the caller to resume in a fresh process (the command line does).
    """
    search = space.search
    check_options(search)  # a mistyped option is a mistake: one line, before anything is written
    seconds = parse(search.time_budget)
    budget = Budget(seconds) if seconds else None  # from now: opening the data counts
    data = open_data(space.data, runs_dir=runs_dir, seed=search.seed)
    if search.folds:  # an impossible k is one line, before anything is deleted
        data.make_folds(search.folds, search.seed)
    strategy = strategies.detect()
    precision = strategies.set_mixed_precision(search.mixed_precision, strategy)
    jit = strategies.jit_compile(search.jit_compile, strategy)
    build.set_jit_compile(jit)
    precision += ", XLA" if jit else ""
    folder = SpaceDir(runs_dir / space.name)
    lock = _lock(space, folder, fresh)
    try:
        if fresh:
            _delete_study(space, folder)
            folder.remove_search()
        else:
            check_resume(space, folder, data.fingerprint)
        _write_record(space, folder, data.fingerprint)
        _write_skipped(data, folder)
        follow_records(folder, search.objective)  # best.keras: a copy a full disk or a kill cut short
        return _search(space, data, folder, strategy, precision, verbose=verbose, hooks=hooks, tracking=tracking,
                       recycle=recycle, budget=budget)
    finally:
        lock.release()


def _search(space: Space, data: ImageData, folder: SpaceDir, strategy: Any, precision: str, *, verbose: int,
            hooks: Sequence[SearchHooks], tracking: bool, recycle: bool, budget: Budget | None) -> Outcome:
    search = space.search
    info = SearchInfo(
        name=space.name, space_path=space.path, space_dir=folder.path,
        settings=recorded_settings(search), data=data.fingerprint,
        strategy=f"{strategies.describe(strategy)}, {precision}",
        replicas=strategies.replicas(strategy), seed=search.seed, overrides=dict(space.fixed),
    )
    tracking_hooks: list[SearchHooks] = []
    if tracking:
        from search.tracking import tracker

        tracking_hooks = tracker.hooks_for(space)
    if search.tensorboard:
        from search.tracking.tensorboard import TensorBoardWriter

        tracking_hooks.append(TensorBoardWriter(space))
    hook_list = HookList([ConsoleProgress(), *tracking_hooks, *hooks])
    print(data.describe())
    if data.skipped:
        print(f"  every skipped file and why: {folder.skipped}")
    tuner = _open_tuner(space, data, info, hook_list, strategy, verbose=verbose,
                        trials_per_process=search.trials_per_process if recycle else None, budget=budget)
    storage = tuner.source.storage

    restore_signals = interrupts.install()
    status: str = COMPLETED
    message = ""
    # What is alive now (TensorFlow, Keras, the data) lives through the whole search: frozen,
    # the full collection after each trial (in clear_session) skips it.
    gc.collect()
    gc.freeze()
    try:
        tuner.run()
    except Recycle:
        status = RECYCLE
    except BudgetSpent:
        status = STOPPED
    except KeyboardInterrupt:
        status, message = KILLED, "interrupted: re-run the same command to resume where it stopped."
    except TooManyFailures:
        status = FAILED
        message = (f"the search stopped: {oracles.MAX_CONSECUTIVE_FAILURES} trials in a row failed, "
                   f"the last with: {tuner.last_error}. Details: {folder.trials}/*/error.txt")
    except Exception as e:
        if not diskfull.is_disk_full(e):
            raise
        hook_list.on_search_end(info, KILLED)  # the records on disk are whole: end the MLflow runs KILLED and say where
        raise diskfull.disk_full(e, folder.path) from None
    finally:
        gc.unfreeze()
        restore_signals()
        tuner.source.close()
    table = records.write_trials_csv(folder)
    outcome = Outcome(status=status, space_dir=folder.path, table=table, message=message, storage=storage,
                      study=_study_name(space))
    if status == RECYCLE:  # the search is not over: its hooks and MLflow run stay open
        hook_list.on_search_pause(info)
        return outcome
    others = tuner.source.completed()
    errors = [str(e) for e in table["error"].dropna()] if "error" in table else []
    if status in (COMPLETED, STOPPED) and outcome.finished == 0 and others and not errors:
        # A worker that joined a shared study when the other workers had run all its trials.
        outcome.message = f"study {outcome.study!r} has its {others} finished trials; the other workers ran them."
    elif status in (COMPLETED, STOPPED) and outcome.finished == 0:
        outcome.status = FAILED
        outcome.message = (f"no trial finished: {_common_error(errors)}. Details: {folder.trials}/*/error.txt"
                           if errors else "no trial finished.")
    hook_list.on_search_end(info, outcome.status)
    if search.minimize:  # the front, attached to the search's MLflow run
        from search.results.pareto import write_pareto
        from search.tracking.client import attach

        if fronts := write_pareto(folder.path):
            print(attach(folder, fronts))
    board = records.leaderboard(table, search.objective)
    if not board.empty and outcome.finished:
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(f"\nLeaderboard ({len(table)} trials, {folder.trials_csv}):\n{board.to_string(index=False)}")
        if folder.best_model.exists():
            print(f"Best model: {folder.best_model}")
    if budget is not None:
        print(budget.summary(outcome.finished, search.max_trials))
    if tuner.feature_cache is not None and (tuner.feature_cache.hits or tuner.feature_cache.builds):
        print(tuner.feature_cache.summary())
    if outcome.message:
        print(("error: " if outcome.status == FAILED else "") + outcome.message, file=sys.stderr)
    return outcome
