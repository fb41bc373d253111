"""python -m search.ensemble SPACE: promote a search's best trials to one servable model.

Compares the best single trial, the report's top-k average and greedy ensemble selection on
the finished trials' saved val probabilities (`search.ensembles`), each scored held-out
(chosen on one half of the val images, scored on the other), and promotes the better
ensemble only when it beats the best single trial by a margin worth its inference cost.
The champion moves as one: runs/<space>/champion.keras, ensemble.json (with its sha256) and
the registry's `champion` alias, and only to a model scoring better (or with --force).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from search.cli import Parser, entry, fail
from search.errors import SearchError

EXAMPLES = """examples:
  python -m search.ensemble spaces/digits.py                  again, e.g. after more trials
  python -m search.ensemble spaces/flowers.py --refit         retrain the members on train+val first, as the report did
  python -m search.ensemble spaces/flowers.py --method top-k  the report's recipe, if it scores better
  python -m search.ensemble spaces/flowers.py --method top-k --force   ...whatever it scores
"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser("python -m search.ensemble",
               "Promote a search's best trials to one model (runs/<space>/champion.keras).", EXAMPLES)
    p.add_saved_search()
    p.add_argument("--top-k", type=int, default=2, metavar="K", help="how many best trials top-k averaging takes (default 2, as the report)")
    p.add_argument("--rounds", type=int, default=50, metavar="N", help="rounds of greedy selection (default 50)")
    p.add_argument("--method", default="auto", choices=["auto", "best-single", "top-k", "greedy"],
                   help="auto (default): the better ensemble if it beats the best single trial; else force one")
    p.add_argument("--force", action="store_true",
                   help="replace the champion even when the new choice does not score better (says what it replaces)")
    p.add_argument("--refit", action="store_true", help="retrain the promoted members on train+val before saving")
    p.add_argument("--no-tracking", action="store_true", help="do not log or register the model in MLflow")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines during --refit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from search.ensembles.promote import promote
        from search.results.saved import locate

        saved = locate(args.space, Path(args.runs_dir))
        promote(saved, top_k=args.top_k, rounds=args.rounds, refit=args.refit, track=not args.no_tracking,
                method=args.method.replace("-", "_"), verbose=0 if args.quiet else 2, force=args.force)
    except SearchError as e:
        return fail(e)
    return 0


if __name__ == "__main__":
    entry(main)
