"""Resident memory over many trials: does a long search stay flat?

    .venv/bin/python bench/memory.py [--trials 30] [--steps 3] [--recycle 5] [--quick]

One search of `--trials` tiny trials (random search over MobileNet-family backbones and
head sizes from scratch at 32 px, scikit-learn's digits, 1 epoch of `--steps` steps, MLflow
off) run by `search.engine.runner.run_search` in this process. A hook reads the process's resident
memory (VmRSS) twice a trial: when the trial ends (its model and graphs still alive), and
after the search has released the trial (read as the next trial begins, or the search
ends). Growth is measured on the second, from trial 3 (once TensorFlow's kernels, the
image store and the first graphs are in) to the last, and split between the trials that
brought a backbone and batch size not run before (new layer shapes, new oneDNN kernels for
TensorFlow's caches) and those that repeated one. Prints a table and writes
runs/bench/memory.json.

Two controls, bare TensorFlow without the framework (a MobileNetV2 built, one traced train
step, `clear_session`, `gc`, in a loop): as is, and with `search.memory.TrialMemory`
around each iteration. The first shows TensorFlow keeping every traced training graph;
the second, that dropping the trial's custom gradients frees it.

`--recycle N` also measures the command line with `Search(trials_per_process=N)`, which
starts a fresh process every N trials: its memory read from outside as each trial's record
appears (the process id survives the re-exec): polled every 0.2 s, so mostly before the
search releases the trial (~0.7 s), with its model still alive. The search is seeded and
resumes its oracle, so both runs train the same trials; the bench prints, for each
recycled process, how much higher the one-process run stood at the end of the same trials.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.core.hooks import SearchHooks  # noqa: E402

SPACE = '''
from search import Data, Search

data = Data("builtin:digits", val_fraction=0.2)
search = Search(algorithm="random", max_trials={trials}, epochs=1, steps_per_epoch={steps}, seed=0)


def hyperparameters(hp):
    hp.Choice("backbone", ["MobileNetV2", "MobileNet", "MobileNetV3Small"])
    hp.Fixed("weights", "none")
    hp.Fixed("image_size", 32)
    hp.Choice("batch_size", [16, 32])
    hp.Int("head_width", 32, 512, sampling="log")
    hp.Float("dropout", 0.0, 0.4)
    hp.Choice("optimizer", ["adam", "rmsprop", "sgd"])
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
'''


def rss_mb() -> float:
    """Resident set size of this process in MB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    import resource  # not Linux: the peak is the best we have

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Memory(SearchHooks):
    """RSS when each trial ends, and once the search has released it."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float | int | str]] = []
        self.started = time.perf_counter()

    def _released(self) -> None:
        if self.rows and "rss_mb" not in self.rows[-1]:
            row = self.rows[-1]
            row["rss_mb"] = round(rss_mb(), 1)
            print(f"trial {row['trial']:>3} {row['backbone']:<17} {row['status']:<9} "
                  f"RSS {row['rss_end_mb']:>7} MB at its end, {row['rss_mb']:>7} MB released", flush=True)

    def on_trial_begin(self, search, trial):
        self._released()

    def on_trial_end(self, search, trial, result):
        self.rows.append({"trial": trial.number, "backbone": trial.config.backbone,
                          "batch_size": trial.config.batch_size, "status": result.status,
                          "rss_end_mb": round(rss_mb(), 1), "elapsed_s": round(time.perf_counter() - self.started, 1)})

    def on_search_end(self, search, status):
        self._released()


BARE = """
import gc, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np, tensorflow as tf
from search.engine.memory import TrialMemory
x = np.random.rand(32, 32, 32, 3).astype("float32"); y = np.random.randint(0, 10, 32)
memory = TrialMemory()
for i in range({n}):
    memory.begin()
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    optimizer = keras.optimizers.Adam()
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    step(x, y)
    del step, model, optimizer
    if {release}:
        memory.release()
    else:
        keras.backend.clear_session(); gc.collect()
    print(int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024, flush=True)
"""


def bare_tensorflow(n: int, release: bool) -> list[float]:
    """RSS after each of n (build + one traced train step + clear_session), no framework code
    but, with `release`, `TrialMemory`."""
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", BARE.format(n=n, release=release)], capture_output=True,
                         text=True, check=True, env=env)
    return [float(line) for line in out.stdout.split()]


def recycled(space_file: Path, runs: Path, every: int) -> list[float]:
    """The command line's RSS as each trial's record appears, recycling every `every` trials."""
    import subprocess

    command = [sys.executable, "-m", "search.run", str(space_file), "--runs-dir", str(runs), "--fresh", "--quiet",
               "--no-tracking", "--no-ensemble", "--set", f"trials_per_process={every}"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status, seen, rows = Path(f"/proc/{child.pid}/status"), 0, []
    while child.poll() is None:
        done = len(list(runs.glob("*/trials/*/result.json")))
        if done > seen:
            seen = done
            try:
                rows.append(int(status.read_text().split("VmRSS:")[1].split()[0]) / 1024)
            except (OSError, IndexError):
                pass
        time.sleep(0.2)
    return rows


def _per_process(rows: list, every: int) -> list[list]:
    """A recycling run's rows, one list per process (`every` trials each; the last may be short)."""
    return [rows[i:i + every] for i in range(0, len(rows), every)]


def process_peaks(rows: list[float], every: int) -> list[float]:
    """The highest RSS of each process of a recycling run."""
    return [max(chunk) for chunk in _per_process(rows, every)]


def recycling_gain(one_process: list[float], recycled_rows: list[float], every: int) -> list[float]:
    """For each process of a recycling run, how much higher the one-process run's RSS stood at
    the end of the same trials, on average (MB). The search is seeded, so trial n is the same
    model in both runs, and only the process's age differs."""
    return [round(sum(a - b for a, b in chunk) / len(chunk), 1)
            for chunk in _per_process(list(zip(one_process, recycled_rows)), every)]


def _growth(rows: list[float]) -> tuple[float, float, float]:
    first = 3 if len(rows) >= 3 else 1
    base, last = rows[first - 1], rows[-1]
    return base, last, 100 * (last - base) / base


def by_novelty(rows: list[dict], first: int) -> dict[str, float | int]:
    """Splits the released RSS's growth after trial `first` between the trials that brought a
    (backbone, batch size) not run before, whose new layer shapes make oneDNN compile and
    cache new kernels, and the trials that repeated one."""
    seen = {(r["backbone"], r["batch_size"]) for r in rows[:first]}
    new_mb = repeat_mb = 0.0
    new = repeat = 0
    for before, row in zip(rows[first - 1:], rows[first:]):
        delta = float(row["rss_mb"]) - float(before["rss_mb"])
        shapes = (row["backbone"], row["batch_size"])
        if shapes in seen:
            repeat, repeat_mb = repeat + 1, repeat_mb + delta
        else:
            new, new_mb = new + 1, new_mb + delta
            seen.add(shapes)
    return {"new_shape_trials": new, "new_shape_growth_mb": round(new_mb, 1),
            "repeat_shape_trials": repeat, "repeat_shape_growth_mb": round(repeat_mb, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--steps", type=int, default=3, help="training steps per trial (default 3)")
    p.add_argument("--recycle", type=int, default=0, metavar="N",
                   help="also run the command line with Search(trials_per_process=N) (default 0: skip)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 trials of 1 step")
    p.add_argument("--out", type=Path, default=Path("runs/bench/memory.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.steps = 4, 1
    from search.engine.runner import run_search
    from search.space import load_space

    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    space_file = tmp / "memory.py"
    space_file.write_text(SPACE.format(trials=args.trials, steps=args.steps))
    memory = _Memory()
    start_mb = rss_mb()
    outcome = run_search(load_space(space_file), runs_dir=tmp / "runs", fresh=True, verbose=0,
                         hooks=[memory], tracking=False)
    gc.collect()
    rows = memory.rows
    first = 3 if len(rows) >= 3 else 1
    base, last, growth = _growth([float(r["rss_mb"]) for r in rows])
    ends = [float(r["rss_end_mb"]) for r in rows]
    end_growth = 100 * (max(ends[first - 1:]) - ends[first - 1]) / ends[first - 1]
    split = by_novelty(rows, first)
    summary = {
        "trials": len(rows), "steps_per_trial": args.steps, "status": outcome.status,
        "rss_before_search_mb": round(start_mb, 1), "rss_after_search_mb": round(rss_mb(), 1),
        f"rss_trial_{first}_mb": base, f"rss_trial_{len(rows)}_mb": last,
        "growth_percent": round(growth, 2), "growth_mb_per_trial": round((last - base) / max(len(rows) - first, 1), 2),
        "rss_released_range_mb": [min(float(r["rss_mb"]) for r in rows[first - 1:]), max(float(r["rss_mb"]) for r in rows[first - 1:])],
        "rss_at_trial_end_peak_mb": max(ends), "rss_at_trial_end_peak_growth_percent": round(end_growth, 2),
        **split,
        "target": "growth < 5% from trial 3 to trial 30", "per_trial": rows, "date": time.strftime("%Y-%m-%d"),
    }
    print(f"\n{'trial':>5} {'backbone':<17} {'at end MB':>9} {'released MB':>11}")
    for r in rows:
        print(f"{r['trial']:>5} {r['backbone']:<17} {r['rss_end_mb']:>9} {r['rss_mb']:>11}")
    print(f"RSS before the search {start_mb:.0f} MB; released, trial {first} {base:.0f} MB -> trial {len(rows)} "
          f"{last:.0f} MB: {growth:+.1f}% ({summary['growth_mb_per_trial']:+.2f} MB per trial); target < 5%")
    print(f"  highest RSS at a trial's end, from trial {first}: {max(ends[first - 1:]):.0f} MB "
          f"({end_growth:+.1f}% over trial {first}'s)")
    if split["new_shape_trials"] + split["repeat_shape_trials"]:
        print(f"  of which {split['new_shape_growth_mb']:+.0f} MB on the {split['new_shape_trials']} trials that brought a "
              f"backbone and batch size not run before (new kernels for oneDNN's caches), "
              f"{split['repeat_shape_growth_mb']:+.0f} MB on the {split['repeat_shape_trials']} that repeated one "
              f"({100 * split['repeat_shape_growth_mb'] / base:+.1f}% of trial {first}'s)")
    n = min(args.trials, 8)
    for release, key, label in ((False, "bare_tensorflow_rss_mb", "clear_session + gc"),
                                (True, "bare_tensorflow_released_rss_mb", "TrialMemory.release")):
        bare = bare_tensorflow(n, release)
        b0, b1, bg = _growth(bare)
        summary[key] = bare
        print(f"Control, bare TensorFlow (MobileNetV2 + one traced train step, {label}) x{len(bare)}: "
              f"iteration 3 {b0:.0f} -> {b1:.0f} MB ({bg:+.1f}%)")
    if args.recycle:
        rows_r = recycled(space_file, tmp / "recycled", args.recycle)
        if rows_r:
            r0, r1, rg = _growth(rows_r)
            # RSS saws up within each process and drops at each fresh one: trial 3 -> the
            # last compares different places on the saw, so compare each process's peak too.
            peaks = process_peaks(rows_r, args.recycle)
            peak_growth = 100 * (peaks[-1] - peaks[0]) / peaks[0]
            summary.update({"recycle_every": args.recycle, "recycled_rss_mb": rows_r,
                            "recycled_peak_mb": max(rows_r), "recycled_growth_percent": round(rg, 2),
                            "recycled_process_peaks_mb": [round(x) for x in peaks],
                            "recycled_peak_growth_percent": round(peak_growth, 2)})
            print(f"Command line, fresh process every {args.recycle} trials: trial 3 {r0:.0f} MB -> "
                  f"trial {len(rows_r)} {r1:.0f} MB ({rg:+.1f}%), peak {max(rows_r):.0f} MB over {len(rows_r)} trials")
            print(f"  peak of each process: {', '.join(f'{x:.0f}' for x in peaks)} MB; first to last "
                  f"{peak_growth:+.1f}%")
            if len(rows_r) == len(ends):
                gain = summary["recycled_gain_per_process_mb"] = recycling_gain(ends, rows_r, args.recycle)
                print(f"  the same trials in one process stood higher at their end by, on average over each "
                      f"recycled process's trials: {', '.join(f'{x:+.0f}' for x in gain)} MB")
            else:  # a record missed between two polls: pairing trials by position would mix them
                print(f"  not compared trial by trial: {len(rows_r)} readings for {len(ends)} trials")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"Wrote {args.out}")
    return 0 if outcome.status == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
