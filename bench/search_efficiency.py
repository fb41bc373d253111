"""Search efficiency: best val accuracy against epochs consumed, random search vs Optuna with pruning.

    python bench/search_efficiency.py [--seeds 3] [--budget 12] [--epochs 3] [--out runs/bench/search_efficiency.json]

Real data (scikit-learn's digits, offline), one small space (MobileNet from scratch at
32 px; learning rate, optimizer, dropout, head width and batch size searched), and the same
epoch budget for every method: random search runs budget/epochs full trials; each Optuna
algorithm (tpe, cmaes, gp when PyTorch is installed) runs with the median pruner until it has
consumed the same number of epochs, so the epochs pruning saves buy more trials. Each method
runs once per seed; the table shows medians over seeds. The defaults (3 seeds, 12 epochs of
20 steps) take about 12 CPU-minutes: 15 minutes on 2 idle cores, 41 on a shared, loaded one.
MLflow tracking is off: it is not measured here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SPACE = '''
from search import Data, Search

data = Data("builtin:digits", val_fraction=0.2)
search = Search(algorithm="random", max_trials=4, epochs=3, steps_per_epoch=20)


def hyperparameters(hp):
    hp.Fixed("backbone", "MobileNet")
    hp.Fixed("weights", "none")
    hp.Fixed("image_size", 32)
    hp.Choice("batch_size", [16, 32])
    hp.Choice("head_width", [64, 256])
    hp.Float("dropout", 0.0, 0.4, step=0.1)
    hp.Choice("optimizer", ["adam", "rmsprop", "sgd"])
    hp.Float("learning_rate", 1e-4, 3e-2, sampling="log")
'''
# Median pruner: compare from the second epoch on, once 2 trials have finished.
PRUNING = {"pruner": "median", "pruner_options": {"n_startup_trials": 2, "n_warmup_steps": 2}}


def run_method(algorithm: str, seed: int, budget: int, epochs: int, runs_dir: Path, space_file: Path) -> dict[str, Any]:
    """One search with `algorithm` until `budget` epochs are consumed; its best-so-far curve."""
    from search.engine.runner import run_search
    from search.results.records import load_records
    from search.space import load_space

    name = f"{algorithm}-{seed}"
    trials, consumed, started = 0, 0, time.monotonic()
    records: list[dict[str, Any]] = []
    while consumed < budget:
        trials += max(1, -(-(budget - consumed) // epochs))  # enough full trials to spend what is left
        space = load_space(space_file, algorithm=algorithm, seed=seed, max_trials=trials, epochs=epochs,
                           sets={} if algorithm == "random" else {"options": repr(PRUNING)})
        space = dataclasses.replace(space, name=name)
        outcome = run_search(space, runs_dir=runs_dir, verbose=0, tracking=False)  # tracking is not measured
        records = sorted(load_records(runs_dir / name), key=lambda r: r["trial_id"])
        consumed = sum(r["epochs_run"] for r in records)
        if outcome.status != "COMPLETED" or len(records) < trials:
            break
    curve, best, spent = [], 0.0, 0
    for r in records:
        spent += r["epochs_run"]
        best = max(best, r["best"].get("val_accuracy") or 0.0)
        curve.append([spent, round(best, 4)])
    return {"algorithm": algorithm, "seed": seed, "best_val_accuracy": best, "epochs": spent, "trials": len(records),
            "pruned": sum(r["status"] == "PRUNED" for r in records), "seconds": round(time.monotonic() - started, 1),
            "curve": curve}


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for algorithm in dict.fromkeys(r["algorithm"] for r in results):
        mine = [r for r in results if r["algorithm"] == algorithm]
        half = [max([b for e, b in r["curve"] if e <= r["epochs"] / 2] or [0.0]) for r in mine]
        rows.append({
            "method": algorithm if algorithm == "random" else f"{algorithm}+median",
            "best_val_accuracy": statistics.median(r["best_val_accuracy"] for r in mine),
            "best_at_half_budget": statistics.median(half),
            "epochs": statistics.median(r["epochs"] for r in mine),
            "trials": statistics.median(r["trials"] for r in mine),
            "pruned": statistics.median(r["pruned"] for r in mine),
            "seconds": statistics.median(r["seconds"] for r in mine),
        })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=int, default=12, help="epochs per method and seed")
    p.add_argument("--epochs", type=int, default=3, help="epochs of one full trial")
    p.add_argument("--algorithms", default="random,tpe,cmaes,gp")
    p.add_argument("--out", default="runs/bench/search_efficiency.json")
    args = p.parse_args(argv)

    algorithms = args.algorithms.split(",")
    if "gp" in algorithms:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("note: skipping gp: Optuna's GPSampler needs PyTorch (pip install torch)", file=sys.stderr)
            algorithms.remove("gp")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        space_file = Path(tmp) / "bench_digits.py"
        space_file.write_text(SPACE)
        for seed in range(args.seeds):
            for algorithm in algorithms:
                result = run_method(algorithm, seed, args.budget, args.epochs, Path(tmp) / "runs", space_file)
                print(f"{algorithm:>7} seed {seed}: best {result['best_val_accuracy']:.4f} in {result['epochs']} epochs, "
                      f"{result['trials']} trials ({result['pruned']} pruned), {result['seconds']:.0f}s", flush=True)
                results.append(result)
    rows = summarize(results)
    import pandas as pd

    print(f"\nMedian over {args.seeds} seeds, budget {args.budget} epochs ({args.epochs} per full trial):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "space": SPACE, "summary": rows, "runs": results}, indent=2))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
