"""python -m search.report SPACE: the leaderboard of a search, as a table, a CSV and plots.

Reads the trial records of RUNS_DIR/<space>/ (and, for an Optuna study shared by several
machines, the other workers' trials from the tracking store), prints the leaderboard, writes
`leaderboard.csv` (every trial, ranked), `size_vs_accuracy.png` (the objective against
parameters and saved MB) and `importance.csv`/`.png` (which hyperparameters mattered), and
attaches them to the search's MLflow run when tracking is on.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from search.cli import Parser, entry, fail
from search.errors import SearchError

EXAMPLES = """examples:
  python -m search.report spaces/digits.py            the demo's leaderboard
  python -m search.report digits --runs-dir /tmp/ci   a search run with --runs-dir
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("python -m search.report", __doc__.split("\n\n")[1].replace("\n", " "), EXAMPLES)
    p.add_saved_search()
    p.add_argument("--top", type=int, default=10, metavar="N", help="leaderboard rows to print (default: 10)")
    p.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the MLflow run")
    p.add_argument("--storage", metavar="URL",
                   help="a shared study's storage, when its URL holds a password (search.json hides it): "
                        "the report checks the study for trials missing here")
    return p


def ranked(table: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Every trial: completed ones best first with their gap to the best, then the rest."""
    from search import metrics
    from search.core.status import COMPLETED

    done = table[table["status"] == COMPLETED].sort_values(objective, ascending=metrics.direction(objective) == "min")
    rest = table[table["status"] != COMPLETED]
    done = done.assign(rank=range(1, len(done) + 1))
    if len(done):
        done["vs_best"] = done[objective] - done[objective].iloc[0]
    return pd.concat([done, rest], ignore_index=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from search.results import importance, plots
        from search.tracking import study
        from search.results.pareto import write_pareto
        from search.results.records import leaderboard, trials_table
        from search.runs import atomic
        from search.results.saved import locate

        saved = locate(args.space, Path(args.runs_dir))
        gathered = study.gather(saved, storage=args.storage)
        if not gathered.listed:
            raise SearchError(f"no trial of {saved.name!r} has ended yet in {saved.folder.trials}; run or resume "
                              "`python -m search.run` first.")
        objective = saved.objective
        plain = trials_table(gathered.listed)
        table = ranked(plain, objective)
    except SearchError as e:
        return fail(e)

    folder = saved.folder
    atomic.write_with(folder.leaderboard, lambda tmp: table.to_csv(tmp, index=False))
    plot = plots.size_vs_accuracy(table, folder.size_plot, objective=objective,
                                  title=f"{saved.name}: {objective} against model size, {len(table)} trials")
    board = leaderboard(plain, objective, top=args.top)
    if not board.empty:
        board.insert(2, "vs_best", board[objective] - board[objective].iloc[0])
    done = int((table["status"] == "COMPLETED").sum())
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(f"Leaderboard of {saved.name!r}: {done} of {len(table)} trials completed, by {objective}")
        print(board.to_string(index=False) if not board.empty else "(no completed trials)")
    if done > 1:
        best, second = table.iloc[0], table.iloc[1]
        print(f"Best: trial {best['trial_id']} ({best.get('backbone', '?')}), {objective} {best[objective]:.4f}, "
              f"{abs(best[objective] - second[objective]):.4f} ahead of trial {second['trial_id']}")
    for note in gathered.notes:
        print(f"note: {note}")
    written = [folder.leaderboard, plot]
    found = importance.write(gathered.listed, folder, objective)
    if found is not None:
        print(f"\nWhich hyperparameters mattered ({found.method} over {found.trials} completed trials, ± its spread "
              f"over {importance.RESAMPLES} bootstrap resamples of them):")
        print(importance.shown(found.table))
        written += found.files
    else:
        print(f"\nWhich hyperparameters mattered: not shown: {importance.why_not(gathered.listed, objective)}.")
    written += write_pareto(folder.path, gathered.listed)
    print(f"Wrote {', '.join(str(p) for p in written)}")
    if not args.no_mlflow:
        from search.tracking.client import attach, log_search_metrics

        print(attach(folder, written))
        if found is not None:
            log_search_metrics(folder, {f"importance_{name}": value
                                        for name, value in zip(found.table["hyperparameter"], found.table["importance"])})
    return 0


if __name__ == "__main__":
    entry(main)
