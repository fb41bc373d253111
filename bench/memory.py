"""Resident memory over many trials: does a long search stay flat?

    .venv/bin/python bench/memory.py [--trials 30] [--steps 3] [--recycle 10] [--quick]

One search of `--trials` tiny trials (random search over MobileNet-family backbones and
head sizes from scratch at 32 px, scikit-learn's digits, 1 epoch of `--steps` steps, MLflow
off) run by `search.run.run_search` in this process. A hook reads the process's resident
memory (VmRSS) after each trial, once the trial's record is written; Keras' session is
cleared right after the hooks run. Growth is measured from trial 3 (once TensorFlow's
kernels, the data cache and the first graphs are in) to the last. Prints a table and writes
runs/bench/memory.json.

TensorFlow keeps every traced training graph until its process ends (a bare
tf.function + GradientTape loop, measured here as a control, grows the same way), so the
command line recycles its process every `Search(trials_per_process=...)` trials and resumes.
`--recycle N` measures that too: the real command in a child process, its memory read from
outside as each trial's record appears (the process id survives the re-exec).
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

from search.hooks import SearchHooks  # noqa: E402

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
    def __init__(self) -> None:
        self.rows: list[dict[str, float | int | str]] = []
        self.started = time.perf_counter()

    def on_trial_end(self, search, trial, result):
        self.rows.append({"trial": trial.number, "backbone": trial.config.backbone, "status": result.status,
                          "rss_mb": round(rss_mb(), 1), "elapsed_s": round(time.perf_counter() - self.started, 1)})
        print(f"trial {trial.number:>3} {trial.config.backbone:<17} {result.status:<9} "
              f"RSS {self.rows[-1]['rss_mb']:>7} MB", flush=True)


BARE = """
import gc, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np, tensorflow as tf
x = np.random.rand(32, 32, 32, 3).astype("float32"); y = np.random.randint(0, 10, 32)
for i in range({n}):
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    optimizer = keras.optimizers.Adam()
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    step(x, y)
    del step, model, optimizer
    keras.backend.clear_session(); gc.collect()
    print(int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024, flush=True)
"""


def bare_tensorflow(n: int) -> list[float]:
    """RSS after each of n build + one traced train step + clear_session, no framework code."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", BARE.format(n=n)], capture_output=True, text=True, check=True)
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


def process_peaks(rows: list[float], every: int) -> list[float]:
    """The highest RSS of each process of a recycling run (`every` trials each; the last may be short)."""
    return [max(rows[i:i + every]) for i in range(0, len(rows), every)]


def _growth(rows: list[float]) -> tuple[float, float, float]:
    first = 3 if len(rows) >= 3 else 1
    base, last = rows[first - 1], rows[-1]
    return base, last, 100 * (last - base) / base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--steps", type=int, default=3, help="training steps per trial (default 3)")
    p.add_argument("--recycle", type=int, default=5, metavar="N",
                   help="also run the command line with trials_per_process=N (default 5, as Search; 0: skip)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 trials of 1 step")
    p.add_argument("--out", type=Path, default=Path("runs/bench/memory.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.steps = 4, 1
    from search.run import run_search
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
    base, last = float(rows[first - 1]["rss_mb"]), float(rows[-1]["rss_mb"])
    growth = 100 * (last - base) / base
    summary = {
        "trials": len(rows), "steps_per_trial": args.steps, "status": outcome.status,
        "rss_before_search_mb": round(start_mb, 1), "rss_after_search_mb": round(rss_mb(), 1),
        f"rss_trial_{first}_mb": base, f"rss_trial_{len(rows)}_mb": last,
        "growth_percent": round(growth, 2), "growth_mb_per_trial": round((last - base) / max(len(rows) - first, 1), 2),
        "target": "growth < 5% from trial 3 to trial 30", "per_trial": rows, "date": time.strftime("%Y-%m-%d"),
    }
    print(f"\n{'trial':>5} {'RSS MB':>8}")
    for r in rows:
        print(f"{r['trial']:>5} {r['rss_mb']:>8}")
    print(f"RSS before the search {start_mb:.0f} MB; trial {first} {base:.0f} MB -> trial {len(rows)} {last:.0f} MB: "
          f"{growth:+.1f}% ({summary['growth_mb_per_trial']:+.2f} MB per trial); target < 5%")
    bare = bare_tensorflow(min(args.trials, 10))
    b0, b1, bg = _growth(bare)
    summary["bare_tensorflow_rss_mb"] = bare
    print(f"Control, bare TensorFlow (MobileNetV2 + one traced train step, clear_session, gc) x{len(bare)}: "
          f"{b0:.0f} -> {b1:.0f} MB ({bg:+.1f}%): the growth is TensorFlow's, not the framework's")
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
                  f"{peak_growth:+.1f}%; target < 5%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"Wrote {args.out}")
    return 0 if outcome.status == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(main())
