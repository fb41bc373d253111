"""python -m search.run SPACE [options]: run (or resume) the search a space file describes."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search import preflight
from search.cli import Parser, entry, fail
from search.core.algorithms import ALGORITHMS, OPTUNA_ALGORITHMS, uses_optuna
from search.errors import SearchError
from search.redaction import redact
from search.runs import diskfull

DESCRIPTION = """Run the search a space file describes, or resume it: re-running the same command
continues where it stopped (finished trials are not re-run). Results go to RUNS_DIR/<space>/."""

EXAMPLES = """examples:
  python -m search.run spaces/digits.py                      the offline demo
  python -m search.run spaces/digits.py --smoke              2 tiny trials, as CI runs them
  python -m search.run spaces/celeb.py --data ~/celeb.zip --set backbone=ResNet50 --max-trials 5
  python -m search.run spaces/digits.py --algorithm tpe --workers 2   two workers of one Optuna study
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("python -m search.run", DESCRIPTION, EXAMPLES)
    p.add_argument("space", nargs="?", help="the space file, e.g. spaces/digits.py")
    p.add_argument("--list", action="store_true",
                   help="print every hyperparameter, backbone, schedule, policy, algorithm and objective, and exit")
    p.add_argument("--data", metavar="PATH", help="dataset location (folder, .zip, TFRecord folder), overriding the space's")
    p.add_argument("--max-trials", type=int, metavar="N", help="how many trials in all (finished ones count)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs per trial")
    p.add_argument("--algorithm", metavar="NAME", help=", ".join(ALGORITHMS))
    p.add_argument("--seed", type=int, help="fixes the data split, shuffling and the sequence of values tried")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="stop after this long (2h, 90m, 1h30m): no trial starts that cannot finish its first epoch, "
                        "the running one stops at the budget with its best epoch kept, then the ensemble is promoted")
    p.add_argument("--tensorboard", action="store_true",
                   help="write each trial's TensorBoard logs with the HParams dashboard (pip install tensorboard)")
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
    p.add_argument("--workers", type=int, metavar="N",
                   help="Optuna algorithms: start N workers of one study on this machine, one GPU each when there "
                        "are N, sharing the runs folder; output lines are prefixed [w1] ...")
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
    if args.list:
        from search import vocabulary

        return vocabulary.main([])
    if args.space is None:
        parser.error("the following arguments are required: space")
    try:
        preflight.check_command(args.space, data_path=args.data, sets=parse_sets(args.set), time_budget=args.time_budget,
                                smoke=args.smoke,
                                max_trials=args.max_trials, epochs=args.epochs, algorithm=args.algorithm, seed=args.seed)
        if args.workers is not None:
            from search.engine.launcher import launch

            return launch(sys.argv[1:] if argv is None else list(argv), args)
        from search.space import load_space

        space = load_space(
            args.space, sets=parse_sets(args.set), data_path=args.data, max_trials=args.max_trials,
            epochs=args.epochs, algorithm=args.algorithm, seed=args.seed, smoke=args.smoke,
        )
        space = configured(space, storage=args.storage, study=args.study, time_budget=args.time_budget,
                           tensorboard=args.tensorboard or None)
        if args.dry_run:
            return _dry_run(space, Path(args.runs_dir))
        from search.engine.runner import RECYCLE

        outcome = search_and_promote(space, Path(args.runs_dir), fresh=args.fresh, verbose=0 if args.quiet else 2,
                                     tracking=not args.no_tracking, ensemble=not args.no_ensemble, recycle=True)
        if outcome.status == RECYCLE:
            _continue_in_fresh_process(sys.argv[1:] if argv is None else list(argv), space.search.trials_per_process)
        return outcome.exit_code
    except SearchError as e:
        return fail(e)
    except OSError as e:
        if not diskfull.is_disk_full(e):
            raise
        return fail(diskfull.disk_full(e, Path(args.runs_dir)))


def configured(space: Any, *, storage: str | None = None, study: str | None = None, time_budget: str | None = None,
               tensorboard: bool | None = None) -> Any:
    """The loaded space with the command's own options applied (None: as the space says)."""
    space = _with_storage(space, storage, study)
    return _with_settings(space, time_budget=time_budget, tensorboard=tensorboard)


def search_and_promote(space: Any, runs_dir: Path, *, fresh: bool, verbose: int, tracking: bool, ensemble: bool,
                       recycle: bool) -> Any:
    """Check the services, run or resume the search, and promote its champion: the command's
    and the notebook API's one path. Returns the runner's Outcome (RECYCLE: nothing promoted)."""
    _check_services(space, runs_dir, tracking=tracking)
    from search.engine.runner import run_search

    outcome = run_search(space, runs_dir=runs_dir, fresh=fresh, verbose=verbose, tracking=tracking, recycle=recycle)
    if outcome.status in ("COMPLETED", "STOPPED") and ensemble:
        from search.ensembles.promote import after_search

        after_search(outcome, space, runs_dir, track=tracking)
    return outcome


def _check_services(space: Any, runs_dir: Path, *, tracking: bool) -> None:
    """The storage and the tracking store connect and accept this user, before anything is written."""
    uri = None
    if tracking:
        from search.tracking.config import load_config, tracking_uri

        config = load_config()
        uri = tracking_uri(config, runs_dir, space.name) if config.enabled else None
    preflight.check_services(dict(space.search.options), uri, runs_dir / space.name)


def _continue_in_fresh_process(argv: list[str], trials: int | None) -> None:
    """Replace this process by the same command, which resumes the search (never --fresh)."""
    print(f"\n{trials} trial(s) ran in this process: continuing in a fresh one "
          "(Search(trials_per_process=...)).", flush=True)
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "search.run", *[a for a in argv if a != "--fresh"]])


def _with_storage(space: Any, storage: str | None, study: str | None) -> Any:
    """--storage/--study travel to the Optuna oracle in the search's options."""
    given = {k: v for k, v in (("storage", storage), ("study", study)) if v}
    if not given:
        return space
    if not uses_optuna(space.search.algorithm):
        raise SearchError(f"--{next(iter(given))} needs an Optuna algorithm ({', '.join(OPTUNA_ALGORITHMS)}), "
                          f"not {space.search.algorithm!r}; add e.g. --algorithm tpe.")
    search = dataclasses.replace(space.search, options={**space.search.options, **given})
    return dataclasses.replace(space, search=search)


def _with_settings(space: Any, **settings: Any) -> Any:
    """Search settings given as options of their own (None: as the space says)."""
    given = {k: v for k, v in settings.items() if v is not None}
    if not given:
        return space
    try:
        return dataclasses.replace(space, search=dataclasses.replace(space.search, **given))
    except SearchError as e:
        raise SearchError(str(e).replace("Search(time_budget=", "--time-budget (").replace(") must", ") must")) from None


def _dry_run(space: Any, runs_dir: Path) -> int:
    from search.data.dataset import open_data
    from search.space import print_space

    data = open_data(space.data, runs_dir=runs_dir, seed=space.search.seed)
    print(redact(f"Space {space.name!r} ({space.path}): {space.search}"))
    print_space(space)
    print(data.describe())
    return 0


if __name__ == "__main__":
    entry(main)
