"""What MLflow tracking costs per trial, next to the trial's training.

    .venv/bin/python bench/tracking_overhead.py [--epochs 3] [--max-trials 2]

Runs a smoke search of the digits demo into runs/bench/tracking_overhead/ with a fresh SQLite store, metrics
flushed every epoch (the worst case: mlflow.yaml's flush_seconds batches more), and times
every call into the tracker's hooks. Prints a table and writes runs/bench/tracking_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search import run  # noqa: E402
from search.tracking import tracker as tracking  # noqa: E402
from search.core.hooks import SearchHooks  # noqa: E402
from search.tracking.config import TrackingConfig  # noqa: E402

PER_TRIAL = ("on_trial_begin", "on_epoch_end", "on_trial_end")


class _Stopwatch(SearchHooks):
    """Runs after the tracker: reads its cumulative hook times at each trial's end."""

    def __init__(self, tracker: tracking.MlflowTracker):
        self.tracker, self.rows, self._before = tracker, [], 0.0

    def on_trial_end(self, search, trial, result):
        spent = sum(self.tracker.seconds.get(m, 0.0) for m in PER_TRIAL)
        self.rows.append({
            "trial": trial.trial_id, "epochs": result.epochs_run, "train_s": round(result.seconds, 2),
            "tracking_s": round(spent - self._before, 3),
            "percent": round(100 * (spent - self._before) / max(result.seconds, 1e-9), 2),
        })
        self._before = spent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-trials", type=int, default=2)
    args = p.parse_args(argv)
    out = Path("runs/bench")
    work = out / "tracking_overhead"  # its own folder: runs/bench/ holds the other benchmarks' results
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work.resolve()}/mlflow.db"
    tracker = tracking.MlflowTracker(TrackingConfig(flush_seconds=0))
    stopwatch = _Stopwatch(tracker)
    tracking.hooks_for = lambda space: [tracker, stopwatch]  # type: ignore[assignment]
    code = run.main(["spaces/digits.py", "--smoke", "--quiet", "--runs-dir", str(work),
                     "--epochs", str(args.epochs), "--max-trials", str(args.max_trials)])

    epochs = sum(r["epochs"] for r in stopwatch.rows)
    summary = {
        "search_exit_code": code,
        "trials": stopwatch.rows,
        "per_hook_seconds": {k: round(v, 3) for k, v in tracker.seconds.items()},
        "per_epoch_log_batch_ms": round(1000 * tracker.seconds.get("on_epoch_end", 0.0) / max(epochs, 1), 2),
        "search_begin_s": round(tracker.seconds.get("on_search_begin", 0.0), 2),
        "search_end_s": round(tracker.seconds.get("on_search_end", 0.0), 2),
    }
    print(f"\n{'trial':>6} {'epochs':>6} {'train s':>8} {'tracking s':>11} {'% of train':>10}")
    for r in stopwatch.rows:
        print(f"{r['trial']:>6} {r['epochs']:>6} {r['train_s']:>8} {r['tracking_s']:>11} {r['percent']:>10}")
    print(f"per epoch (log_batch every epoch): {summary['per_epoch_log_batch_ms']} ms; "
          f"once per search: begin {summary['search_begin_s']} s (store, tags, space file), "
          f"end {summary['search_end_s']} s (best model logged and registered)")
    (out / "tracking_overhead.json").write_text(json.dumps(summary, indent=2))
    print(f"Wrote {out / 'tracking_overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
