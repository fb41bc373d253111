"""What the framework costs next to the training it runs: `search.run` against a plain Keras loop.

    .venv/bin/python bench/overhead.py [--epochs 6] [--repeats 3] [--quick]

The same fixed trials (a grid over three backbones from scratch at 32 px, every other
hyperparameter fixed, scikit-learn's digits, the same epochs) run three ways, interleaved
(plain, search, search+MLflow, plain, ...) in one process so that machine noise hits all
three alike:

- plain: `build_model` + `compile_model` + `model.fit` on the same `ImageData` datasets;
- search: `python -m search.run SPACE --no-tracking --no-ensemble` (in-process `main`);
- search+MLflow: the same with tracking on, into a SQLite store in a temp folder.

A warm-up round (not counted) pays the imports, TensorFlow's first graphs and the SQLite
store's migrations. Fixed cost = wall time minus `model.fit` time; the framework's cost
per trial is its fixed cost minus the plain loop's, divided by the trials. Prints a table
and writes runs/bench/overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKBONES = ["MobileNetV2", "MobileNet", "MobileNetV3Small"]
FIXED = {"weights": "none", "image_size": 32, "batch_size": 32, "head_width": 128, "dropout": 0.1,
         "optimizer": "adam", "learning_rate": 2e-3, "augmentation": "none"}
SPACE = '''
from search import Data, Search

data = Data("builtin:digits", val_fraction=0.2)
search = Search(algorithm="grid", max_trials={trials}, epochs={epochs}, steps_per_epoch={steps}, seed=0)


def hyperparameters(hp):
    hp.Choice("backbone", {backbones})
{fixed}
'''
VARIANTS = ("plain", "search", "search+mlflow")


def write_space(folder: Path, backbones: list[str], epochs: int, steps: int | None) -> Path:
    fixed = "\n".join(f"    hp.Fixed({k!r}, {v!r})" for k, v in FIXED.items())
    path = folder / "overhead.py"
    path.write_text(SPACE.format(trials=len(backbones), epochs=epochs, steps=steps, backbones=backbones, fixed=fixed))
    return path


def plain(space_file: Path, runs_dir: Path) -> tuple[float, float]:
    """The same trials as a plain Keras loop: (wall seconds, seconds inside model.fit)."""
    import keras

    from search.models import build as models
    from search.data.dataset import open_data
    from search.hparams import TrialConfig
    from search.space import load_space

    started = time.perf_counter()
    space = load_space(space_file)
    search = space.search
    data = open_data(space.data, runs_dir=runs_dir, seed=search.seed)
    fit_seconds = 0.0
    for number, backbone in enumerate(BACKBONES[: search.max_trials], start=1):
        config = TrialConfig.from_values({**FIXED, "backbone": backbone})
        keras.utils.set_random_seed(search.seed * 1000 + number)
        model = models.build_model(config, data.num_classes)
        models.compile_model(model, config)
        train = data.dataset("train", config.image_size, config.batch_size, shuffle=True, seed=search.seed + number,
                             repeat=search.steps_per_epoch is not None)
        val = data.dataset("val", config.image_size, config.batch_size)
        fit_started = time.perf_counter()
        model.fit(train, validation_data=val, epochs=search.epochs, steps_per_epoch=search.steps_per_epoch, verbose=0)
        fit_seconds += time.perf_counter() - fit_started
        del model
    return time.perf_counter() - started, fit_seconds


def framework(space_file: Path, runs_dir: Path, tracking: bool) -> tuple[float, float]:
    """The same trials through `search.run`: (wall seconds, seconds inside model.fit from result.json)."""
    from search import run

    argv = [str(space_file), "--runs-dir", str(runs_dir), "--fresh", "--quiet", "--no-ensemble"]
    started = time.perf_counter()
    code = run.main(argv + ([] if tracking else ["--no-tracking"]))
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"search.run exited with {code}")
    records = [json.loads(p.read_text()) for p in (runs_dir / space_file.stem / "trials").glob("*/result.json")]
    if any(r["status"] != "COMPLETED" for r in records):
        raise SystemExit(f"a trial did not complete: {[r['error'] for r in records]}")
    return wall, sum(r["seconds"] for r in records)


def measure(variant: str, space_file: Path, runs_dir: Path) -> tuple[float, float]:
    from search.engine.memory import TrialMemory

    memory = TrialMemory()
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        if variant == "plain":
            result = plain(space_file, runs_dir)
        else:
            result = framework(space_file, runs_dir, tracking=variant == "search+mlflow")
    # Untimed: no variant pays for the garbage of the one before, nor for the traced graphs
    # the plain loop leaks (TensorFlow's gradient registry keeps them; every full garbage
    # collection after would walk them).
    memory.release()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial (default 6: ~35 s of training a trial on 2 cores)")
    p.add_argument("--steps", type=int, default=None, help="steps per epoch (default: the whole train split)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the three variants (default 3)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 1 epoch of 3 steps")
    p.add_argument("--out", type=Path, default=Path("runs/bench/overhead.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.steps, args.repeats = 1, 3, 1

    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    runs_dir = tmp / "runs"
    space_file = write_space(tmp, BACKBONES, args.epochs, args.steps)
    (tmp / "warmup").mkdir()
    warmup = write_space(tmp / "warmup", BACKBONES, 1, 2)
    for variant in VARIANTS:  # imports, first graphs, the store's migrations: not counted
        measure(variant, warmup, runs_dir)

    runs: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for round_ in range(args.repeats):
        for variant in VARIANTS:
            wall, fit = measure(variant, space_file, runs_dir)
            runs[variant].append((wall, fit))
            print(f"round {round_ + 1}: {variant:<14} wall {wall:6.1f} s, in model.fit {fit:6.1f} s", flush=True)

    trials = len(BACKBONES)
    rows: dict[str, dict[str, Any]] = {}
    for variant, pairs in runs.items():
        wall = statistics.median(w for w, _ in pairs)
        fit = statistics.median(f for _, f in pairs)
        rows[variant] = {"wall_s": round(wall, 2), "fit_s": round(fit, 2), "fixed_s": round(wall - fit, 2),
                         "fixed_per_trial_s": round((wall - fit) / trials, 2)}
    base = rows["plain"]
    for variant, row in rows.items():
        # Per round ratios, then the median: each round's variants ran side by side.
        ratios = [w / pw for (w, _), (pw, _) in zip(runs[variant], runs["plain"])]
        row["ratio_to_plain"] = round(statistics.median(ratios), 3)
        row["extra_per_trial_s"] = round((row["fixed_s"] - base["fixed_s"]) / trials, 2)
    trial_s = base["fit_s"] / trials
    summary = {
        "trials": trials, "epochs": args.epochs, "steps_per_epoch": args.steps, "repeats": args.repeats,
        "backbones": BACKBONES, "fixed": FIXED, "data": "builtin:digits (1437 train, 360 val)",
        "training_seconds_per_trial": round(trial_s, 2), "variants": rows,
        "raw": {v: [[round(w, 2), round(f, 2)] for w, f in pairs] for v, pairs in runs.items()},
        # What the same fixed cost means for a trial of 5 minutes of training.
        "ratio_for_5_min_trials": {v: round((300 + r["fixed_per_trial_s"]) / (300 + base["fixed_per_trial_s"]), 4)
                                   for v, r in rows.items()},
        # The shortest trial (seconds of training) for which the framework's extra cost is <= 5%.
        "shortest_trial_s_for_1_05": {v: round(max(r["extra_per_trial_s"], 0) / 0.05, 1) for v, r in rows.items()},
        "target": "ratio <= 1.05",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"\n{trials} trials x {args.epochs} epochs, {trial_s:.1f} s of model.fit per trial (median of {args.repeats})")
    print(f"{'variant':<14} {'wall s':>7} {'fit s':>7} {'fixed s':>8} {'fixed/trial':>11} "
          f"{'extra/trial':>11} {'ratio':>6} {'ratio@5min':>10} {'1.05 from':>9}")
    for variant, r in rows.items():
        print(f"{variant:<14} {r['wall_s']:>7} {r['fit_s']:>7} {r['fixed_s']:>8} {r['fixed_per_trial_s']:>11} "
              f"{r['extra_per_trial_s']:>11} {r['ratio_to_plain']:>6} {summary['ratio_for_5_min_trials'][variant]:>10} "
              f"{summary['shortest_trial_s_for_1_05'][variant]:>8}s")
    print("ratio: wall time against the plain loop; ratio@5min: the same fixed costs on 5-minute trials; "
          "1.05 from: the shortest trial (training seconds) whose ratio is <= 1.05")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
