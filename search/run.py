"""python -m search.run SPACE [options]: run (or resume) the search a space file describes."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.cli import Parser, fail
from search.errors import SearchError

DESCRIPTION = """Run the search a space file describes, or resume it: re-running the same command
continues where it stopped (finished trials are not re-run). Results go to RUNS_DIR/<space>/."""

EXAMPLES = """examples:
  python -m search.run spaces/digits.py                      the offline demo
  python -m search.run spaces/digits.py --smoke              2 tiny trials, as CI runs them
  python -m search.run spaces/celeb.py --data ~/celeb.zip --set backbone=ResNet50 --max-trials 5
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("python -m search.run", DESCRIPTION, EXAMPLES)
    p.add_argument("space", help="the space file, e.g. spaces/digits.py")
    p.add_argument("--data", metavar="PATH", help="dataset location (folder, .zip, TFRecord folder), overriding the space's")
    p.add_argument("--max-trials", type=int, metavar="N", help="how many trials in all (finished ones count)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs per trial")
    p.add_argument("--algorithm", metavar="NAME", help="random, grid, bayesian, hyperband, tpe, cmaes, gp, nsga2")
    p.add_argument("--seed", type=int, help="fixes the data split, shuffling and the sequence of values tried")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="fix a hyperparameter or override a Search/Data setting (repeatable), e.g. --set backbone=MobileNet",
    )
    p.add_argument("--storage", metavar="URL",
                   help="Optuna algorithms: the study's storage, shared by every worker started with it "
                        "(postgresql://..., mysql://..., sqlite:///..., or a journal file path); "
                        "default RUNS_DIR/<space>/optuna.journal")
    p.add_argument("--study", metavar="NAME", help="Optuna algorithms: the study's name (default: the space's name)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where results go (default: runs/)")
    p.add_argument("--fresh", action="store_true", help="start this search over instead of resuming it")
    p.add_argument("--smoke", action="store_true", help="a CI-sized search: 2 trials, 1 epoch, 3 steps, small images, weights=none")
    p.add_argument("--dry-run", action="store_true", help="validate the space and the data, print them, train nothing")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--no-tracking", action="store_true", help="no MLflow tracking for this search (mlflow.yaml's enabled: false)")
    p.add_argument("--no-ensemble", action="store_true",
                   help="do not promote an ensemble of the best trials when the search completes")
    return p


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    sets: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SearchError(f"--set {item!r} must look like NAME=VALUE, e.g. --set image_size=64")
        sets[name.strip()] = value.strip()
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from search.space import load_space

        space = load_space(
            args.space, sets=parse_sets(args.set), data_path=args.data, max_trials=args.max_trials,
            epochs=args.epochs, algorithm=args.algorithm, seed=args.seed, smoke=args.smoke,
        )
        space = _with_storage(space, args.storage, args.study)
        if args.dry_run:
            return _dry_run(space, Path(args.runs_dir))
        outcome = run_search(space, runs_dir=Path(args.runs_dir), fresh=args.fresh, verbose=0 if args.quiet else 2,
                             tracking=not args.no_tracking, recycle=True)
        if outcome.status == RECYCLE:
            _continue_in_fresh_process(sys.argv[1:] if argv is None else list(argv), space.search.trials_per_process)
        # Ensembles (search.ensemble): a completed search promotes its best trials to champion.keras.
        if outcome.status == "COMPLETED" and not args.no_ensemble:
            from search.ensemble import after_search

            after_search(args.space, Path(args.runs_dir), track=not args.no_tracking)
        return outcome.exit_code
    except SearchError as e:
        return fail(e)


RECYCLE = "RECYCLE"


def _continue_in_fresh_process(argv: list[str], trials: int | None) -> None:
    """Replace this process by the same command, which resumes the search (never --fresh)."""
    print(f"\n{trials} trial(s) ran in this process: continuing in a fresh one "
          "(Search(trials_per_process=...)).", flush=True)
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "search.run", *[a for a in argv if a != "--fresh"]])


@dataclasses.dataclass
class Outcome:
    status: str  # COMPLETED, FAILED, KILLED, or RECYCLE (stopped to go on in a fresh process)
    space_dir: Path
    table: Any  # pandas.DataFrame of trials
    message: str = ""

    @property
    def exit_code(self) -> int:
        return {"COMPLETED": 0, "FAILED": 1, "KILLED": 130, RECYCLE: 0}[self.status]


def _with_storage(space: Any, storage: str | None, study: str | None) -> Any:
    """--storage/--study travel to the Optuna oracle in the search's options."""
    given = {k: v for k, v in (("storage", storage), ("study", study)) if v}
    if not given:
        return space
    if space.search.algorithm not in ("tpe", "cmaes", "gp", "nsga2"):
        raise SearchError(f"--{next(iter(given))} needs an Optuna algorithm (tpe, cmaes, gp, nsga2), "
                          f"not {space.search.algorithm!r}; add e.g. --algorithm tpe.")
    search = dataclasses.replace(space.search, options={**space.search.options, **given})
    return dataclasses.replace(space, search=search)


def redact(url: str) -> str:
    """A storage URL without its password, fit for files and tags others can read."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def recorded_settings(search: Any) -> dict[str, Any]:
    """The Search settings as search.json and MLflow record them: no secrets."""
    settings = dataclasses.asdict(search)
    if isinstance(settings["options"].get("storage"), str):
        settings["options"] = {**settings["options"], "storage": redact(settings["options"]["storage"])}
    return settings


def _dry_run(space: Any, runs_dir: Path) -> int:
    from search.data import open_data
    from search.space import print_space

    data = open_data(space.data, runs_dir=runs_dir, seed=space.search.seed)
    print(f"Space {space.name!r} ({space.path}): {space.search}")
    print_space(space)
    print(data.describe())
    return 0


def _prepare_space_dir(space: Any, space_dir: Path, fingerprint: dict[str, Any], fresh: bool) -> None:
    from search.results import write_json

    record = space_dir / "search.json"
    if fresh and space_dir.exists():
        for name in ("tuner", "trials", "trials.csv", "best.keras", "best.json", "val_labels.npy", "search.json",
                     "optuna.journal", "pareto.csv", "pareto.png",
                     "mlflow.json", "champion.keras", "ensemble.json", "ensemble"):
            target = space_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    elif record.exists():
        import json

        previous = json.loads(record.read_text())
        if previous.get("data", {}).get("content_hash") != fingerprint.get("content_hash"):
            raise SearchError(
                f"{space_dir} holds a search on other data ({previous.get('data', {}).get('root')}); "
                "resuming would mix results. Pass --fresh to start over, or --runs-dir DIR to keep both."
            )
        if previous.get("seed") != space.search.seed:
            raise SearchError(
                f"{space_dir} was searched with --seed {previous.get('seed')}, not {space.search.seed}; "
                "pass the same seed to resume, or --fresh to start over."
            )
    space_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, {
        "space": str(space.path), "space_sha256": space.sha256, "seed": space.search.seed,
        "settings": recorded_settings(space.search), "fixed": dict(space.fixed), "data": fingerprint,
    })


def run_search(space: Any, *, runs_dir: Path = Path("runs"), fresh: bool = False, verbose: int = 2,
               hooks: Sequence[Any] = (), tracking: bool = True, recycle: bool = False) -> Outcome:
    """Run or resume `space`'s search; returns how it ended and the trials table.

    `tracking=False` leaves MLflow out whatever mlflow.yaml says. `recycle=True` stops after
    the space's `trials_per_process` trials with status RECYCLE, the search still open, for
    the caller to resume in a fresh process (the command line does).
    """
    from search import strategy as strategy_module
    from search.data import open_data
    from search.hooks import COMPLETED, FAILED, KILLED, HookList, SearchInfo
    from search.progress import ConsoleProgress
    from search.results import leaderboard, write_trials_csv
    from search.tuner import Recycle, SpaceTuner, make_oracle

    search = space.search
    data = open_data(space.data, runs_dir=runs_dir, seed=search.seed)
    strategy = strategy_module.detect()
    precision = strategy_module.set_mixed_precision(search.mixed_precision, strategy)
    space_dir = runs_dir / space.name
    _prepare_space_dir(space, space_dir, data.fingerprint, fresh)

    info = SearchInfo(
        name=space.name, space_path=space.path, space_dir=space_dir,
        settings=recorded_settings(search), data=data.fingerprint,
        strategy=f"{strategy_module.describe(strategy)}, {precision}",
        replicas=strategy_module.replicas(strategy), seed=search.seed, overrides=dict(space.fixed),
    )
    hook_list = HookList([ConsoleProgress(), *(_tracking_hooks(space) if tracking else []), *hooks])
    print(data.describe())
    tuner = SpaceTuner(space, data, info, hook_list, strategy, make_oracle(search, search.seed),
                       overwrite=fresh, verbose=verbose,
                       trials_per_process=search.trials_per_process if recycle else None)

    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    status, message = COMPLETED, ""
    # What is alive now (TensorFlow, Keras, the data) lives through the whole search: frozen,
    # the full collection after each trial (in clear_session) skips it, ~0.4 s a trial.
    gc.collect()
    gc.freeze()
    try:
        tuner.search(verbose=0)  # our ConsoleProgress replaces Keras Tuner's display
    except Recycle:
        status = RECYCLE
    except KeyboardInterrupt:
        status, message = KILLED, "interrupted: re-run the same command to resume where it stopped."
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        status = FAILED
        message = (f"the search stopped: {tuner.oracle.max_consecutive_failed_trials} trials in a row failed, "
                   f"the last with: {tuner.last_error}. Details: {space_dir}/trials/*/error.txt")
    finally:
        gc.unfreeze()
        signal.signal(signal.SIGTERM, previous_handler)
    if status == RECYCLE:  # the search is not over: its hooks and MLflow run stay open
        hook_list.on_search_pause(info)
        return Outcome(status=status, space_dir=space_dir, table=write_trials_csv(space_dir))
    hook_list.on_search_end(info, status)

    table = write_trials_csv(space_dir)
    if search.minimize:
        from search.pareto import finish

        finish(space_dir)
    board = leaderboard(table, search.objective)
    if not board.empty:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(f"\nLeaderboard ({len(table)} trials, {space_dir / 'trials.csv'}):\n{board.to_string(index=False)}")
        if (space_dir / "best.keras").exists():
            print(f"Best model: {space_dir / 'best.keras'}")
    if message:
        print(("error: " if status == FAILED else "") + message, file=sys.stderr)
    return Outcome(status=status, space_dir=space_dir, table=table, message=message)


def _tracking_hooks(space: Any) -> list[Any]:
    """MLflow tracking, when the tracking module is present (see mlflow.yaml)."""
    try:
        from search import tracking
    except ImportError:
        return []
    return tracking.hooks_for(space)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
