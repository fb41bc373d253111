"""python -m search.report SPACE: the leaderboard of a search, as a table, a CSV and a plot.

Reads the trial records in RUNS_DIR/<space>/ (written by `python -m search.run`), prints the
leaderboard, writes `leaderboard.csv` (every trial, ranked) and `size_vs_accuracy.png` (the
objective against parameters and saved MB, every trial), and attaches both to the search's
MLflow run when tracking is on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from search.cli import Parser, fail
from search.errors import SearchError
from search.hooks import COMPLETED
from search.results import leaderboard, load_records, trials_table

EXAMPLES = """examples:
  python -m search.report spaces/digits.py            the demo's leaderboard
  python -m search.report digits --runs-dir /tmp/ci   a search run with --runs-dir
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("python -m search.report", __doc__.split("\n\n")[1], EXAMPLES)
    p.add_saved_search()
    p.add_argument("--top", type=int, default=10, metavar="N", help="leaderboard rows to print (default: 10)")
    p.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the MLflow run")
    return p


def space_dir_for(space: str, runs_dir: Path) -> Path:
    """RUNS_DIR/<name> for a space file or a space name, checked to hold a search."""
    name = Path(space).stem if space.endswith(".py") else space
    space_dir = runs_dir / name
    if not (space_dir / "trials").is_dir() or not any((space_dir / "trials").glob("*/result.json")):
        raise SearchError(
            f"no finished trials for space {name!r} in {space_dir}; run `python -m search.run "
            f"{space if space.endswith('.py') else f'spaces/{name}.py'}"
            f"{'' if runs_dir == Path('runs') else f' --runs-dir {runs_dir}'}` first, "
            "or pass --runs-dir where it ran."
        )
    return space_dir


def ranked(table: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Every trial: completed ones best first with their gap to the best, then the rest."""
    ascending = "loss" in objective
    done = table[table["status"] == COMPLETED].sort_values(objective, ascending=ascending)
    rest = table[table["status"] != COMPLETED]
    done = done.assign(rank=range(1, len(done) + 1))
    if len(done):
        done["vs_best"] = done[objective] - done[objective].iloc[0]
    return pd.concat([done, rest], ignore_index=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs_dir = Path(args.runs_dir)
        space_dir = space_dir_for(args.space, runs_dir)
        settings = json.loads((space_dir / "search.json").read_text()).get("settings", {}) \
            if (space_dir / "search.json").exists() else {}
        objective = settings.get("objective", "val_accuracy")
        plain = trials_table(load_records(space_dir))
        table = ranked(plain, objective)
    except SearchError as e:
        return fail(e)

    from search import plots

    csv = space_dir / "leaderboard.csv"
    table.to_csv(csv, index=False)
    plot = plots.size_vs_accuracy(table, space_dir / "size_vs_accuracy.png", objective=objective,
                                  title=f"{space_dir.name}: {objective} against model size, {len(table)} trials")
    board = leaderboard(plain, objective, top=args.top)
    if not board.empty:
        board.insert(2, "vs_best", board[objective] - board[objective].iloc[0])
    done = int((table["status"] == COMPLETED).sum())
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(f"Leaderboard of {space_dir.name!r}: {done} of {len(table)} trials completed, by {objective}")
        print(board.to_string(index=False) if not board.empty else "(no completed trials)")
    if done > 1:
        best, second = table.iloc[0], table.iloc[1]
        print(f"Best: trial {best['trial_id']} ({best.get('backbone', '?')}), {objective} {best[objective]:.4f}, "
              f"{abs(best[objective] - second[objective]):.4f} ahead of trial {second['trial_id']}")
    print(f"Wrote {csv} and {plot}")
    from search.pareto import write_pareto

    front = write_pareto(space_dir)  # multi-objective searches only: pareto.csv, pareto.png
    if not args.no_mlflow:
        try:
            from search import tracking
        except ImportError:
            return 0
        print(tracking.log_report(space_dir, [csv, plot, *front]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
