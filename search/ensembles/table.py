"""How a promotion reads on the console: every candidate's in-sample and held-out figures,
what was promoted and why, and where the champion is."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

LABELS = {"best_single": "best single", "top_k": "top-k average", "greedy": "greedy selection"}


def _members(row: dict[str, Any]) -> str:
    return " + ".join(m if w == 1 else f"{m} x{w}" for m, w in zip(row["members"], row["weights"]))


def print_summary(summary: dict[str, Any]) -> None:
    rows = summary["candidates"]
    objective = summary.get("objective", "val_accuracy")
    name = objective.removeprefix("val_")
    shown = [m for m in ("val_accuracy", "val_f1", "val_top5_accuracy", "val_loss") if m in next(iter(rows.values()))]
    with_test = any("test_accuracy" in r for r in rows.values())
    with_held = any(f"held_out_{objective}" in r for r in rows.values())
    images = f"out-of-fold predictions of {summary['val_images']} train+val images ({summary['folds']} folds)" \
        if summary.get("folds") else f"{summary['val_images']} val images"
    print(f"\nEnsembles of {summary['finished_trials']} finished trials, scored on {images}"
          + (" and the labelled test split" if with_test else "") + f", by {objective}:")
    header = "".join(f" {m.removeprefix('val_'):>10}" for m in shown)
    held_header = f" {'held-out ' + name:>18} {'cost':>5}" if with_held else ""
    print(f"  {'candidate':<18}{header}{held_header}" + (f" {'test acc':>9}" if with_test else "") + "  members")
    for method, r in rows.items():
        values = "".join(f" {r[m]:>10.4f}" for m in shown)
        held = (f" {r[f'held_out_{objective}']:>18.4f} {r.get('inference_cost', 1.0):>4.1f}x"
                if f"held_out_{objective}" in r else (" " * 25 if with_held else ""))
        test = f" {r['test_accuracy']:>9.4f}" if "test_accuracy" in r else (" " * 10 if with_test else "")
        print(f"  {LABELS[method]:<18}{values}{held}{test}  {_members(r)}")
    if with_held:
        margin = summary.get("held_out", {}).get("margin")
        print("  in-sample: chosen and scored on the same images; held-out: chosen on one half, scored on the "
              "other, both ways" + (f"; an ensemble must gain {margin:.4f} held-out" if margin is not None else ""))
    promoted = summary["promoted"]
    print(f"Promoted: {LABELS[promoted['method']]} ({_members(promoted)}); {summary['reason']}.")
    if "model_max_abs_diff" in promoted:
        print(f"  saved model reloaded: val accuracy {promoted['model_val_accuracy']:.4f}, "
              f"max |difference| from the members' weighted average {promoted['model_max_abs_diff']:.2g}")
    if summary["refit"]:
        refit_test = f"; test accuracy after refit {promoted['test_accuracy']:.4f}" if "test_accuracy" in promoted else ""
        print(f"  refit on train+val: its val score cannot be measured honestly{refit_test}")
    for note in summary.get("notes", []):
        if note.startswith("trial "):  # a candidate left out: its files are missing or unreachable
            print(f"note: {note}")
    print(f"Champion: {promoted['model']}  (details: {Path(promoted['model']).parent / 'ensemble.json'})")
    if summary.get("mlflow"):
        print(summary["mlflow"], file=sys.stderr if summary["mlflow"].startswith("warning:") else sys.stdout)
