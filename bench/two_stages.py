"""Two stages against plain fine-tuning at equal wall time, on a real transfer task.

    python bench/two_stages.py [--seconds 150] [--seeds 2]

The backbone is pretrained offline: a MobileNetV2 trained on Fashion-MNIST at 96 px and saved
without its top as a weights file (`bench/frozen_heads.py`'s, made once), as the report's
Level 2 loads a local notop file. The task is scikit-learn's handwritten digits, split
60/20/20 into train, val and a held-out test set the searches never see. Each arm is one
trial trained until the same time budget (`Search(time_budget=...)`, counted from the start
of the search, so the two-stage arm's pass over the data to embed it is paid inside it):

- plain: `fine_tune="all"` from a random head, Adam at 1e-4 (the report's Level 2 rate);
- two stages: `probe_then_all`, the head first on cached features (`probe_epochs`, Adam at
  1e-3), then everything at `fine_tune_learning_rate` 1e-4 from that head.

It prints the best val accuracy and the held-out accuracy of each arm's kept model.

    python bench/two_stages.py --halving [--seconds 300] [--seeds 1]

compares two searches of many configurations (head width, dropout, the probe's learning rate)
under the same time budget, every trial `probe_then_all`: one fine-tunes every trial, the
other (`Search(fine_tune_best=0.25)`) only the trials whose probe ranks in the best quarter of
the probes so far. It prints each search's trials, how many were fine-tuned, the best val
accuracy of its champion (best.keras: the best fine-tuned trial) and its held-out accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import frozen_heads  # noqa: E402 - bench/ is not a package

SPACE = '''
from search import Data, Search

data = Data({data!r})
search = Search(algorithm="random", max_trials=1, epochs=200, seed={seed}, time_budget={seconds})


def hyperparameters(hp):
    hp.Fixed("backbone", "MobileNetV2")
    hp.Fixed("weights", {weights!r})
    hp.Fixed("image_size", 96)
    hp.Fixed("batch_size", 32)
    hp.Fixed("head_width", 256)
    hp.Fixed("dropout", 0.2)
    hp.Fixed("fine_tune", {fine_tune!r})
    hp.Fixed("learning_rate", {learning_rate})
    hp.Fixed("probe_epochs", 5)
    hp.Fixed("fine_tune_learning_rate", 1e-4)
'''
ARMS = {"plain": ("all", 1e-4), "two_stages": ("probe_then_all", 1e-3)}

HALVING_SPACE = '''
from search import Data, Search

data = Data({data!r})
search = Search(algorithm="random", max_trials=500, epochs=5, seed={seed}, time_budget={seconds},
                fine_tune_best={fine_tune_best})


def hyperparameters(hp):
    hp.Fixed("backbone", "MobileNetV2")
    hp.Fixed("weights", {weights!r})
    hp.Fixed("image_size", 96)
    hp.Fixed("batch_size", 32)
    hp.Fixed("fine_tune", "probe_then_all")
    hp.Fixed("probe_epochs", 4)
    hp.Fixed("fine_tune_learning_rate", 1e-4)
    hp.Choice("head_width", [32, 64, 128, 256, 512])
    hp.Float("dropout", 0.0, 0.5)
    hp.Float("learning_rate", 1e-4, 3e-2, sampling="log")
'''
HALVING_ARMS = {"every_trial": None, "halving": 0.25}


def write_digits(root: Path, seed: int = 0) -> Path:
    """train/ and val/ class folders, and test/<class>/ held out, 60/20/20 per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if (root / "test").is_dir():
        return root
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        cut = [int(len(indices) * 0.6), int(len(indices) * 0.8)]
        for split, part in zip(("train", "val", "test"), np.split(indices, cut)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in part:
                Image.fromarray(images[index]).save(folder / f"{index:04d}.png")
    return root


def held_out_accuracy(model_path: Path, root: Path) -> float:
    import keras
    import tensorflow as tf

    from search.data.dataset import decode_image

    files = sorted((root / "test").glob("*/*.png"))
    labels = np.array([int(f.parent.name) for f in files])
    pixels = np.stack([decode_image(tf.io.read_file(str(f)), 96).numpy() for f in files]).astype("float32")
    model = keras.models.load_model(model_path, compile=False)
    return float((model.predict(pixels, verbose=0).argmax(1) == labels).mean())


def _transfer_task() -> tuple[Path, Path]:
    """(the notop MobileNetV2 96 px pretrained on Fashion-MNIST, the digits folder): made once."""
    work = Path("runs/bench/frozen_heads")
    weights = frozen_heads.pretrain(work / "MobileNetV2_96_fashion_notop.weights.h5", "MobileNetV2", 96, 300, 3)
    return weights, write_digits(Path("runs/bench/two_stages/digits"))


def _search_arm(tmp: str, template: str, name: str, **fields: object) -> Path:
    """Write `template` filled with `fields` as a space file, run it as search `name`; its folder."""
    from search.engine.runner import run_search
    from search.space import load_space

    space_file = Path(tmp) / f"{name}.py"
    space_file.write_text(template.format(**fields))
    space = dataclasses.replace(load_space(space_file), name=name)
    run_search(space, runs_dir=Path(tmp) / "runs", verbose=0, tracking=False)
    return Path(tmp) / "runs" / name


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=150.0, help="wall time of each arm's search")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="60 s an arm, one seed")
    p.add_argument("--halving", action="store_true",
                   help="a search fine-tuning every trial against one fine-tuning the best quarter of the probes")
    p.add_argument("--out", default=None, help="the JSON written (runs/bench/two_stages[_halving].json)")
    args = p.parse_args(argv)
    seconds, seeds = (60.0, 1) if args.quick else (args.seconds, args.seeds)
    if args.halving:
        return halving(seconds, seeds, Path(args.out or "runs/bench/two_stages_halving.json"), vars(args))
    args.out = args.out or "runs/bench/two_stages.json"

    from search.results.records import load_records

    weights, root = _transfer_task()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for arm, (fine_tune, rate) in ARMS.items():
                folder = _search_arm(tmp, SPACE, f"{arm}-{seed}", data=str(root.resolve()), seed=seed,
                                     seconds=seconds, weights=str(weights.resolve()), fine_tune=fine_tune,
                                     learning_rate=rate)
                (record,) = load_records(folder)
                history = record["history"]
                result = {"arm": arm, "seed": seed, "best_val_accuracy": record["best"].get("val_accuracy"),
                          "held_out_accuracy": held_out_accuracy(Path(record["model_path"]), root),
                          "epochs": record["epochs_run"], "stage_of_best": record["best"].get("stage"),
                          "probe_epochs": sum(1 for s in history.get("stage", []) if s == 1.0)}
                print(json.dumps(result), flush=True)
                results.append(result)
    print(f"\nMedian over {seeds} seed(s), {seconds:.0f} s of wall time an arm (digits, MobileNetV2 96 px "
          "pretrained on Fashion-MNIST):")
    summary = {}
    for arm in ARMS:
        mine = [r for r in results if r["arm"] == arm]
        summary[arm] = {k: statistics.median(r[k] for r in mine) for k in ("best_val_accuracy", "held_out_accuracy",
                                                                          "epochs")}
        print(f"  {arm:>10}: best val accuracy {summary[arm]['best_val_accuracy']:.4f}, held-out "
              f"{summary[arm]['held_out_accuracy']:.4f}, {summary[arm]['epochs']:.0f} epochs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "summary": summary, "runs": results}, indent=2))
    print(f"Wrote {out}")
    return 0


def halving(seconds: float, seeds: int, out: Path, settings: dict[str, object]) -> int:
    """Every trial fine-tuned against the best quarter of the probes, at equal wall time."""
    from search.results.records import load_records
    from search.runs.layout import SpaceDir

    weights, root = _transfer_task()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for arm, fraction in HALVING_ARMS.items():
                folder = SpaceDir(_search_arm(tmp, HALVING_SPACE, f"{arm}-{seed}", data=str(root.resolve()),
                                              seed=seed, seconds=seconds, weights=str(weights.resolve()),
                                              fine_tune_best=fraction))
                records = load_records(folder)
                tuned = [r for r in records if 2.0 in (r.get("history") or {}).get("stage", [])]
                champion = json.loads(folder.best_record.read_text()) if folder.best_record.is_file() else {}
                result = {
                    "arm": arm, "seed": seed, "trials": len(records), "fine_tuned": len(tuned),
                    "best_val_accuracy": champion.get("score"),
                    "held_out_accuracy": held_out_accuracy(folder.best_model, root) if champion else None,
                    "best_probe_only_val_accuracy": max((r["best"].get("val_accuracy", 0.0) for r in records
                                                         if r["status"] == "PRUNED"), default=None),
                }
                print(json.dumps(result), flush=True)
                results.append(result)
    print(f"\nMedian over {seeds} seed(s), {seconds:.0f} s of wall time a search (digits, MobileNetV2 96 px "
          "pretrained on Fashion-MNIST; champion = best fine-tuned trial):")
    summary = {}
    for arm in HALVING_ARMS:
        mine = [r for r in results if r["arm"] == arm]
        summary[arm] = {k: statistics.median(r[k] or 0.0 for r in mine)
                        for k in ("trials", "fine_tuned", "best_val_accuracy", "held_out_accuracy")}
        print(f"  {arm:>11}: {summary[arm]['trials']:.0f} trials, {summary[arm]['fine_tuned']:.0f} fine-tuned, "
              f"champion val accuracy {summary[arm]['best_val_accuracy']:.4f}, held-out "
              f"{summary[arm]['held_out_accuracy']:.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "summary": summary, "runs": results}, indent=2))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
