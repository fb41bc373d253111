"""Search efficiency: the median best val accuracy after each trial, five algorithms, cached heads.

    python bench/search_efficiency.py                      # 30 trials x 5 seeds x 5 algorithms, 5 epochs
    python bench/search_efficiency.py --quick              # 6 trials x 2 seeds, 3 epochs at 32 px (minutes)
    python bench/search_efficiency.py --hours 1            # start no seed after an hour; run it again to go on
    python bench/search_efficiency.py --report             # the table and plot of the searches finished so far

The space is `bench/spaces/digits_heads.py`: handwritten digits (60% train, 20% val) through a
frozen MobileNetV2 pretrained on Fashion-MNIST (a notop weights file made here once, as
bench/two_stages.py does), only the head searched: width 32-1024 (log), dropout 0.2-0.5,
optimizer, learning rate 1e-5 to 1e-1 (log). The widths are narrower than the report's
128-8192 so that 750 trials take about an hour on a 2-core CPU (a trial's head training grows
with its width); what separates good from bad configurations here is mostly the optimizer and
learning rate, which keep the report's ranges. Every trial trains its head on cached features,
and every search of a run shares one feature cache (each search's `features/` is a link to
one folder), so the backbone's pass over the data is paid once and what is measured is the
search.

Each (algorithm, seed) search has its own folder under runs/bench/search_efficiency/<setting>/
and runs to its trials; an interrupted run resumes where it stopped when run again (a
search already finished is only read). The searches run seed by seed, the five algorithms of
a seed together, so that a run cut short by `--hours` leaves whole seeds.

The algorithms run as a search runs them: Optuna's (tpe, cmaes) with the median pruner, the
search's default, which stops a trial at an epoch where it is below the median of earlier
trials there (a pruned trial counts as a trial, scored on the epochs it ran; `--pruner none`
turns it off, in a folder of its own). Keras Tuner's random and bayesian run every trial to
its epochs.

Hyperband's trial is not the others' unit either: Keras Tuner's Hyperband runs brackets of
short trials and continues the best (a continued trial is a new trial that trains on from
its parent's epochs). One iteration of its brackets is 10 trials with `epochs` 5 (6 with the
quick mode's 3): it runs as many iterations as reach the others' trials. So every curve is
also drawn against the epochs spent (the second panel), and the table gives both.

It prints the table (median best val accuracy after 10, 20 and 30 trials, the trials and
epochs each algorithm needs to reach random search's final median best), writes the JSON
and a plot (median best-so-far with the interquartile band, one line per algorithm) under
runs/bench/. MLflow tracking and the ensemble are off: they are not measured here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # this checkout's search
import frozen_heads  # noqa: E402 - bench/ is not a package
import two_stages  # noqa: E402

SPACE_FILE = Path(__file__).resolve().parent / "spaces" / "digits_heads.py"
ALGORITHMS = ("random", "tpe", "cmaes", "bayesian", "hyperband")
ENDED = ("COMPLETED", "PRUNED", "FAILED")
WEIGHTS = Path("runs/bench/frozen_heads/MobileNetV2_96_fashion_notop.weights.h5")
DIGITS = Path("runs/bench/two_stages/digits")


class Mode(NamedTuple):
    trials: int
    seeds: int
    epochs: int
    image_size: int


FULL = Mode(30, 5, 5, 96)
QUICK = Mode(6, 2, 3, 32)


def hyperband_iterations(epochs: int, trials: int) -> int:
    """Iterations of Keras Tuner's Hyperband (factor 3, max_epochs `epochs`) that run at least
    `trials` trials: it takes no max_trials."""
    import keras_tuner as kt

    oracle = kt.oracles.HyperbandOracle(objective="val_accuracy", max_epochs=epochs, factor=3)
    # Its schedule is not exposed otherwise.
    per_iteration = sum(oracle._get_size(bracket, r)  # noqa: SLF001
                        for bracket in range(oracle._get_num_brackets())  # noqa: SLF001
                        for r in range(oracle._get_num_rounds(bracket)))  # noqa: SLF001
    return -(-trials // per_iteration)


def run_one(algorithm: str, seed: int, mode: Mode, runs_dir: Path, shared_features: Path,
            pruner: str = "median") -> dict[str, Any]:
    """Run or resume the (algorithm, seed) search to `mode.trials` trials; its trials in order."""
    from search.core.algorithms import uses_optuna
    from search.engine.runner import run_search
    from search.space import load_space

    name = f"{algorithm}-seed{seed}"
    folder = runs_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "features"
    if not link.is_symlink():
        link.symlink_to(shared_features.resolve(), target_is_directory=True)
    started = time.monotonic()
    if len(read_one(folder)) < mode.trials:
        sets = {"weights": str(WEIGHTS.resolve()), "image_size": str(mode.image_size)}
        if algorithm == "hyperband":
            sets["options"] = repr({"hyperband_iterations": hyperband_iterations(mode.epochs, mode.trials)})
            sets["keep_models"] = "all"  # a continued trial starts from its parent's model, best or not
        elif uses_optuna(algorithm) and pruner != "median":
            sets["options"] = repr({"pruner": pruner})
        space = load_space(SPACE_FILE, algorithm=algorithm, seed=seed, max_trials=mode.trials, epochs=mode.epochs,
                           data_path=str(DIGITS.resolve()), sets=sets)
        with (folder / "search.log").open("a") as log, contextlib.redirect_stdout(log):  # its own lines, kept apart
            outcome = run_search(dataclasses.replace(space, name=name), runs_dir=runs_dir, verbose=0, tracking=False)
        if outcome.status == "KILLED":  # Ctrl-C: the searches done so far are kept, this one resumes
            raise SystemExit(f"{name}: {outcome.message}")
        if outcome.status != "COMPLETED":
            print(f"note: {name} ended {outcome.status}: {outcome.message}", file=sys.stderr)
    return {"algorithm": algorithm, "seed": seed, "trials": read_one(folder),
            "seconds": round(time.monotonic() - started, 1)}


def read_one(folder: Path) -> list[dict[str, Any]]:
    """The ended trials of the search in `folder`, in the order they were asked."""
    from search.results.records import load_records

    records = sorted((r for r in load_records(folder) if r["status"] in ENDED) if folder.is_dir() else [],
                     key=lambda r: r.get("number") or 0)
    return [{"number": r.get("number"), "status": r["status"], "val_accuracy": r["best"].get("val_accuracy"),
             "epochs": r["epochs_run"], "seconds": r["seconds"], "values": r["values"]} for r in records]


def finished(done: dict[tuple[str, int], list[dict[str, Any]]], trials: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Of the (algorithm, seed) searches' trials in `done`: the runs of those that reached `trials`,
    and the ones started but not finished, named with their progress."""
    runs = [{"algorithm": a, "seed": seed, "trials": ended, "seconds": None}
            for (a, seed), ended in done.items() if len(ended) >= trials]
    unfinished = [f"{a} seed {seed} ({len(ended)}/{trials})" for (a, seed), ended in done.items() if 0 < len(ended) < trials]
    return runs, unfinished


def best_so_far(run: dict[str, Any]) -> tuple[list[float], list[int]]:
    """After each trial: the best val accuracy so far (a failed trial scores 0), the epochs spent."""
    best, spent, curve, epochs = 0.0, 0, [], []
    for trial in run["trials"]:
        best = max(best, trial["val_accuracy"] or 0.0)
        spent += trial["epochs"]
        curve.append(best)
        epochs.append(spent)
    return curve, epochs


def band(curves: list[list[float]], length: int) -> np.ndarray:
    """(3, length): the 25th, 50th and 75th percentiles over runs at each step; a run that
    stopped early keeps its last value."""
    padded = np.array([c + [c[-1]] * (length - len(c)) for c in curves if c])
    return np.percentile(padded, [25, 50, 75], axis=0)


def on_epochs(curve: list[float], epochs: list[int], grid: np.ndarray) -> list[float]:
    """A best-so-far curve read at each number of epochs spent in `grid` (0 before its first trial)."""
    at = np.searchsorted(np.array(epochs), grid, side="right") - 1
    return [curve[i] if i >= 0 else 0.0 for i in at]


def first_reaching(curve: np.ndarray, target: float) -> int | None:
    """1-based index of the first point of `curve` at or above `target`."""
    hits = np.flatnonzero(curve >= target - 1e-9)
    return int(hits[0]) + 1 if hits.size else None


def summarize(runs: list[dict[str, Any]], trials: int) -> dict[str, Any]:
    """Per algorithm: the bands over seeds against trials and epochs, and the table's row."""
    by_algorithm = {a: [r for r in runs if r["algorithm"] == a] for a in dict.fromkeys(r["algorithm"] for r in runs)}
    curves = {a: [best_so_far(r) for r in mine] for a, mine in by_algorithm.items()}
    max_epochs = max(e[-1] for pairs in curves.values() for _, e in pairs if e)
    grid = np.arange(1, max_epochs + 1)
    target = float(band([c for c, _ in curves["random"]], trials)[1][-1]) if "random" in curves else None
    summary: dict[str, Any] = {"random_final_median_best": target, "algorithms": {}}
    for algorithm, pairs in curves.items():
        length = max(trials, *(len(c) for c, _ in pairs))
        by_trial = band([c for c, _ in pairs], length)
        by_epoch = band([on_epochs(c, e, grid) for c, e in pairs], len(grid))
        row: dict[str, Any] = {"seeds": len(pairs), "trials_run": [len(c) for c, _ in pairs],
                               "epochs_run": [e[-1] if e else 0 for _, e in pairs]}
        for k in (10, 20, 30):
            if k <= length:
                row[f"median_best_after_{k}"] = round(float(by_trial[1][k - 1]), 4)
        row["median_best_final"] = round(float(by_trial[1][-1]), 4)
        if target is not None:
            row["trials_to_random_final"] = first_reaching(by_trial[1], target)
            row["epochs_to_random_final"] = first_reaching(by_epoch[1], target)
            row["seeds_reaching_it"] = sum(max(c or [0.0]) >= target - 1e-9 for c, _ in pairs)
        seconds = [t["seconds"] for r in by_algorithm[algorithm] for t in r["trials"]]
        row["median_trial_seconds"] = round(float(np.median(seconds)), 1) if seconds else None
        row["failed_trials"] = sum(t["status"] == "FAILED" for r in by_algorithm[algorithm] for t in r["trials"])
        summary["algorithms"][algorithm] = {"row": row, "by_trial": np.round(by_trial, 4).tolist(),
                                            "by_epoch": np.round(by_epoch, 4).tolist()}
    summary["epochs_grid_max"] = int(max_epochs)
    return summary


def table(summary: dict[str, Any]) -> str:
    import pandas as pd

    rows = []
    for algorithm, s in summary["algorithms"].items():
        row = s["row"]
        reach = row.get("trials_to_random_final")
        rows.append({"algorithm": algorithm, "seeds": row["seeds"],
                     **{f"after {k}": row.get(f"median_best_after_{k}", "-") for k in (10, 20, 30)},
                     "trials to random's final": reach if reach is not None else "not reached",
                     "epochs to it": row.get("epochs_to_random_final") or "not reached",
                     "seeds reaching it": row.get("seeds_reaching_it"),
                     "median epochs": int(np.median(row["epochs_run"])),
                     "s/trial": row["median_trial_seconds"], "failed": row["failed_trials"]})
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}")


def plot(summary: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_trial, by_epoch) = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    for algorithm, s in summary["algorithms"].items():
        for axis, key in ((by_trial, "by_trial"), (by_epoch, "by_epoch")):
            low, median, high = (np.array(v) for v in s[key])
            x = np.arange(1, len(median) + 1)
            # random, the reference, dashed on top: another curve may run right under it
            style = {"color": "black", "linestyle": "--", "zorder": 3} if algorithm == "random" else {}
            (line,) = axis.plot(x, median, label=algorithm, linewidth=1.5, drawstyle="steps-post", **style)
            axis.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0, step="post")
    if summary["random_final_median_best"] is not None:
        for axis in (by_trial, by_epoch):
            axis.axhline(summary["random_final_median_best"], color="grey", linestyle=":", linewidth=1)
    by_trial.set(xlabel="trial", ylabel="best val accuracy so far (median, IQR band)")
    by_epoch.set(xlabel="epochs spent")
    low = min(min(s["by_trial"][0][2:] or [0.0]) for s in summary["algorithms"].values())
    for axis in (by_trial, by_epoch):
        axis.set_ylim(max(0.0, low - 0.02), None)
        axis.grid(alpha=0.3)
    by_trial.legend(loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def run_seeds(mode: Mode, algorithms: list[str], runs_dir: Path, shared: Path, pruner: str,
              hours: float | None) -> list[dict[str, Any]]:
    """Run or resume each seed's searches, the algorithms of a seed together; no seed starts after `hours`."""
    started, runs = time.monotonic(), []
    for seed in range(mode.seeds):
        if hours is not None and time.monotonic() - started > hours * 3600:
            print(f"note: --hours {hours} spent: stopped before seed {seed}; run again to go on", file=sys.stderr)
            break
        for algorithm in algorithms:
            run = run_one(algorithm, seed, mode, runs_dir, shared, pruner)
            curve, epochs = best_so_far(run)
            print(f"{algorithm:>9} seed {seed}: {len(curve)} trials, {epochs[-1] if epochs else 0} epochs, best "
                  f"{curve[-1] if curve else 0.0:.4f}, {run['seconds']:.0f}s", flush=True)
            runs.append(run)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="6 trials x 2 seeds, 3 epochs at 32 px")
    p.add_argument("--trials", type=int, help="trials of each search (default 30)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 of each algorithm (default 5)")
    p.add_argument("--epochs", type=int, help="epochs of a full trial, hyperband's max_epochs (default 5)")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--pruner", default="median", choices=["median", "none"],
                   help="the Optuna algorithms' pruner (median: the search's default)")
    p.add_argument("--hours", type=float, help="start no new seed after this long; run again to go on")
    p.add_argument("--report", action="store_true",
                   help="run nothing: the table and plot of the searches finished so far, seed by seed")
    p.add_argument("--out", default=None, help="the JSON (default runs/bench/search_efficiency[_quick].json)")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    mode = Mode(args.trials or base.trials, args.seeds or base.seeds, args.epochs or base.epochs, base.image_size)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    from search.core.algorithms import ALGORITHMS as KNOWN

    unknown = [a for a in algorithms if a not in KNOWN]
    if unknown or not algorithms:
        print(f"error: --algorithms {args.algorithms!r}: unknown {', '.join(unknown) or 'none given'}; "
              f"use some of {', '.join(KNOWN)}", file=sys.stderr)
        return 2
    if not frozen_heads.FASHION.is_dir():
        print(f"error: {frozen_heads.FASHION} is missing: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2

    if not args.report:
        frozen_heads.pretrain(WEIGHTS, "MobileNetV2", 96, 300, 3)
        two_stages.write_digits(DIGITS)
    runs_dir = Path("runs/bench/search_efficiency") / f"{'quick' if args.quick else 'full'}-e{mode.epochs}-{mode.image_size}px"
    if args.pruner != "median":
        runs_dir = runs_dir.with_name(f"{runs_dir.name}-pruner-{args.pruner}")
    shared = runs_dir.parent / "features"  # its keys name backbone, weights, size and data: one for every setting
    shared.mkdir(parents=True, exist_ok=True)
    if args.report:
        runs, unfinished = finished({(a, seed): read_one(runs_dir / f"{a}-seed{seed}")
                                     for seed in range(mode.seeds) for a in algorithms}, mode.trials)
        if unfinished:
            print(f"note: left out, not finished: {', '.join(unfinished)}", file=sys.stderr)
    else:
        runs = run_seeds(mode, algorithms, runs_dir, shared, args.pruner, args.hours)
    if not runs:
        print(f"error: no search of {runs_dir} has finished its trials; run without --report", file=sys.stderr)
        return 1
    summary = summarize(runs, mode.trials)
    seeds = sorted({r["seed"] for r in runs})
    per_algorithm = sorted({s["row"]["seeds"] for s in summary["algorithms"].values()})
    counted = f"{per_algorithm[0]}" if len(per_algorithm) == 1 else f"{per_algorithm[0]}-{per_algorithm[-1]}"
    title = (f"digits heads on a frozen MobileNetV2 (Fashion-MNIST notop, {mode.image_size} px): "
             f"{mode.trials} trials x {counted} seeds, {mode.epochs} epochs")
    target = summary["random_final_median_best"]
    print(f"\n{title}; random's final median best {'none (no random search finished)' if target is None else f'{target:.4f}'}:")
    print(table(summary))
    out = Path(args.out or f"runs/bench/search_efficiency{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {**vars(args), **mode._asdict(), "algorithms": algorithms, "seeds_run": seeds},
                               "summary": summary, "runs": runs}, indent=1))
    plot(summary, out.with_suffix(".png"), title)
    print(f"Wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
