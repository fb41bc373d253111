"""How long a user waits for the one line that names their mistake.

    .venv/bin/python bench/mistakes.py [--repeats 3] [--quick]

Runs `python -m search.run` in a fresh process, as a user does, on mistakes caught before
TensorFlow is imported (a missing --data folder, a data folder of one class, a typo in a
space file, an unknown backbone in its hyperparameters, an unknown algorithm) and prints
the median seconds to the exit and its line.
Writes runs/bench/mistakes.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "spaces" / "digits.py"


def cases(folder: Path) -> dict[str, list[str]]:
    one_class = folder / "one_class" / "cat"
    one_class.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(one_class / f"{i}.png")
    typo = folder / "typo.py"
    typo.write_text(DIGITS.read_text().replace("max_trials=4", "max_trails=4"))
    backbone = folder / "backbone.py"
    backbone.write_text(DIGITS.read_text().replace('"MobileNet"]', '"MobileNetV3Smal"]'))
    return {
        "missing --data folder": [str(DIGITS), "--data", str(folder / "nowhere")],
        "data of one class": [str(DIGITS), "--data", str(folder / "one_class")],
        "typo in the space file": [str(typo)],
        "unknown backbone in hyperparameters()": [str(backbone)],
        "unknown --algorithm": [str(DIGITS), "--algorithm", "tpee"],
    }


def timed(args: list[str], runs: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search.run", *args, "--runs-dir", str(runs)], cwd=REPO,
                          capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode, done.stderr.strip().splitlines()[-1][:100]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one run of each mistake")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in cases(Path(tmp)).items():
            runs = [timed(command, Path(tmp) / "runs") for _ in range(repeats)]
            rows.append({"mistake": name, "seconds": round(statistics.median(r[0] for r in runs), 2),
                         "exit": runs[0][1], "line": runs[0][2]})
    width = max(len(r["mistake"]) for r in rows)
    print(f"{'mistake':<{width}}  seconds  exit  line")
    for r in rows:
        print(f"{r['mistake']:<{width}}  {r['seconds']:>7.2f}  {r['exit']:>4}  {r['line']}")
    out = REPO / "runs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "mistakes.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
