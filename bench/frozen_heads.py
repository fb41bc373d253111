"""Frozen heads: a head sweep on a frozen backbone, with the feature cache against without it.

    python bench/frozen_heads.py --quick      # MobileNetV2 at 96 px, a few thousand Fashion-MNIST images
    python bench/frozen_heads.py              # DenseNet201 at 224 px (--weights: imagenet, a notop file, or random)
    python bench/frozen_heads.py --weights random --per-class 40 --val-per-class 10 --uncached-trials 1 --rounds 1

Both arms run the same search (`random`, the same seed, so the same 30 configurations of
head width, dropout, optimizer and learning rate) through `search.run`'s engine with MLflow
off: one with `feature_cache=True` (the default), one with `feature_cache=False`, which runs
every epoch through the backbone. They run interleaved in one process, a few trials of each
in turn, so that the load of a shared machine falls on both alike. Trials per hour count the
whole wall time of each arm, the cached arm's one pass over the data included. The uncached
arm may run fewer trials (`--uncached-trials`); its trials per hour come from those, and the
best val accuracy is compared on the trials both arms ran (the same configurations).

Quick mode's backbone has no ImageNet weights offline: it is pretrained here for a few epochs
on other Fashion-MNIST images (not those of the sweep) and saved as a notop weights file,
once, under runs/bench/frozen_heads/. Offline, the full mode's `--weights random` saves a
DenseNet201 of random weights (seed `--seed`) as a notop file there, once: both arms and every
trial then load the same backbone and share its features, which carry little of the classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
PRETRAIN_PER_CLASS = 300  # the first train images of each class, left to quick mode's pretraining
SPACE = '''
from search import Data, Search

data = Data({data!r})
search = Search(algorithm="random", max_trials=30, epochs={epochs}, seed={seed})


def hyperparameters(hp):
    hp.Fixed("backbone", {backbone!r})
    hp.Fixed("weights", {weights!r})
    hp.Fixed("image_size", {size})
    hp.Fixed("fine_tune", "frozen")
    hp.Fixed("batch_size", 32)
    hp.Int("head_width", 64, 2048, sampling="log")
    hp.Float("dropout", 0.0, 0.5, step=0.1)
    hp.Choice("optimizer", ["adam", "rmsprop", "sgd"])
    hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
'''


class Mode(NamedTuple):
    backbone: str
    size: int
    train_per_class: int
    val_per_class: int
    epochs: int


QUICK = Mode("MobileNetV2", 96, 200, 50, 15)
FULL = Mode("DenseNet201", 224, 300, 100, 15)


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def write_folders(root: Path, train_per_class: int, val_per_class: int, skip: int) -> Path:
    """train/<class>/*.png and val/<class>/*.png from Fashion-MNIST's train and test files;
    the first `skip` train images of each class are left to pretraining."""
    from PIL import Image

    if (root / "val").is_dir():
        return root
    for split, prefix, first, count in (("train", "train", skip, train_per_class), ("val", "t10k", 0, val_per_class)):
        images, labels = read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz"), read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
        for label in range(10):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for index in np.flatnonzero(labels == label)[first:first + count]:
                Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
    return root


def pretrain(path: Path, backbone: str, size: int, per_class: int, epochs: int) -> Path:
    """A notop weights file of `backbone` trained on `per_class` Fashion-MNIST images a class."""
    if path.is_file():
        return path
    import keras

    from search.models import build

    images, labels = read_idx(FASHION / "train-images-idx3-ubyte.gz"), read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    picked = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    x = np.repeat(images[picked][..., None], 3, axis=-1).astype("float32")
    x = keras.ops.convert_to_numpy(keras.ops.image.resize(x, (size, size))) / 127.5 - 1.0
    headless = fresh_backbone(backbone, size, seed=0)
    for layer in build.all_layers(headless):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # from scratch: statistics that keep up with a short training
    head = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(headless.output))
    model = keras.Model(headless.input, head)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.monotonic()
    model.fit(x, labels[picked], batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    print(f"pretrained {backbone} at {size} px on {len(picked)} images, {epochs} epochs, in "
          f"{time.monotonic() - started:.0f}s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    headless.save_weights(path)
    return path


def fresh_backbone(backbone: str, size: int, seed: int) -> Any:
    """`backbone` without its top, for `size` px, with the random weights of `seed`."""
    import keras

    from search.models import build

    keras.utils.set_random_seed(seed)
    return build.construct_headless(build.get_backbone(backbone), (size, size, 3), None)


def random_weights(path: Path, backbone: str, size: int, seed: int) -> Path:
    """A notop weights file of `backbone` with the random weights of `seed`."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh_backbone(backbone, size, seed).save_weights(path)
    return path


def run_arm(space_file: Path, runs_dir: Path, name: str, trials: int, cached: bool) -> float:
    """Resume arm `name` up to `trials` finished trials; the wall seconds it took."""
    from search.engine.runner import run_search
    from search.space import load_space

    space = load_space(space_file, max_trials=trials, sets={"feature_cache": str(cached), "keep_models": "all"})
    space = dataclasses.replace(space, name=name)
    started = time.monotonic()
    outcome = run_search(space, runs_dir=runs_dir, verbose=0, tracking=False)
    if outcome.status != "COMPLETED":
        raise SystemExit(f"the {name} arm ended {outcome.status}: {outcome.message}")
    return time.monotonic() - started


def arm_summary(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    accuracies = [r["best"].get("val_accuracy") or 0.0 for r in records]
    return {"trials": len(records), "wall_seconds": round(seconds, 1),
            "trials_per_hour": round(len(records) / seconds * 3600, 1),
            "best_val_accuracy": round(max(accuracies), 4), "val_accuracy": [round(a, 4) for a in accuracies],
            "values": [r["values"] for r in records]}


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="MobileNetV2 at 96 px on 2,500 images (CI-sized)")
    p.add_argument("--trials", type=int, default=30, help="trials of the cached arm")
    p.add_argument("--uncached-trials", type=int, default=None, help="trials of the uncached arm (default: --trials)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 15)")
    p.add_argument("--rounds", type=int, default=5, help="turns the two arms take")
    p.add_argument("--weights", help="the backbone's weights: imagenet, a notop file, or random (a file of random "
                                     "weights saved here); default: imagenet, in quick mode pretrained here")
    p.add_argument("--per-class", type=positive, help="train images a class (default: the mode's)")
    p.add_argument("--val-per-class", type=positive, help="val images a class (default: the mode's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/frozen_heads.json")
    args = p.parse_args(argv)
    mode = QUICK if args.quick else FULL
    mode = mode._replace(train_per_class=args.per_class or mode.train_per_class,
                         val_per_class=args.val_per_class or mode.val_per_class)
    epochs = args.epochs or mode.epochs
    uncached_trials = min(args.uncached_trials or args.trials, args.trials)
    if not FASHION.is_dir():
        print(f"error: {FASHION} is missing: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 2
    if mode.train_per_class > 6000 - PRETRAIN_PER_CLASS or mode.val_per_class > 1000:
        print(f"error: Fashion-MNIST has {6000 - PRETRAIN_PER_CLASS} train images a class for the sweep and 1000 "
              f"val: lower --per-class or --val-per-class", file=sys.stderr)
        return 2

    work = Path("runs/bench/frozen_heads")
    if args.weights == "random":
        weights = str(random_weights(work / f"{mode.backbone}_{mode.size}_random{args.seed}_notop.weights.h5",
                                     mode.backbone, mode.size, args.seed).resolve())
    else:
        weights = args.weights or ("imagenet" if not args.quick else str(pretrain(
            work / f"{mode.backbone}_{mode.size}_fashion_notop.weights.h5", mode.backbone, mode.size,
            PRETRAIN_PER_CLASS, 3).resolve()))
    data = write_folders(work / f"fashion-{mode.train_per_class}-{mode.val_per_class}", mode.train_per_class,
                         mode.val_per_class, skip=PRETRAIN_PER_CLASS)

    from search.results.records import load_records

    with tempfile.TemporaryDirectory() as tmp:
        space_file = Path(tmp) / "frozen_heads.py"
        space_file.write_text(SPACE.format(data=str(data.resolve()), epochs=epochs, seed=args.seed,
                                           backbone=mode.backbone, weights=weights, size=mode.size))
        runs = Path(tmp) / "runs"
        seconds = {"cached": 0.0, "uncached": 0.0}
        for turn in range(1, args.rounds + 1):
            for arm, total in (("uncached", uncached_trials), ("cached", args.trials)):
                upto = math.ceil(total * turn / args.rounds)
                seconds[arm] += run_arm(space_file, runs, arm, upto, cached=arm == "cached")
                print(f"turn {turn}: {arm} at {upto} trials, {seconds[arm]:.0f}s so far", flush=True)
        records = {arm: sorted(load_records(runs / arm), key=lambda r: r["trial_id"]) for arm in seconds}
        cache_files = sorted((runs / "cached" / "features").glob("*.npy"))
        cache_mb = sum(f.stat().st_size for f in cache_files) / 2**20

    cached, uncached = (arm_summary(records[arm], seconds[arm]) for arm in ("cached", "uncached"))
    shared = uncached["trials"]
    same_values = cached["values"][:shared] == uncached["values"]
    paired = np.abs(np.array(cached["val_accuracy"][:shared]) - np.array(uncached["val_accuracy"]))
    summary = {
        "mode": "quick" if args.quick else "full", "backbone": mode.backbone, "image_size": mode.size,
        "train_images": 10 * mode.train_per_class, "val_images": 10 * mode.val_per_class, "epochs": epochs,
        "weights": weights, "speedup_trials_per_hour": round(cached["trials_per_hour"] / uncached["trials_per_hour"], 1),
        "cached_trials": cached["trials"], "uncached_trials": shared,
        "best_val_accuracy_cached_all": cached["best_val_accuracy"],
        "best_val_accuracy_cached_first_n": round(max(cached["val_accuracy"][:shared]), 4),
        "best_val_accuracy_uncached": uncached["best_val_accuracy"],
        "paired_val_accuracy_max_abs_diff": round(float(paired.max()), 4), "same_configurations": same_values,
        "cache_mb": round(cache_mb, 1), "cache_entries": len(cache_files),
    }
    print(f"\n{mode.backbone} {mode.size} px, frozen, {summary['train_images']} train / {summary['val_images']} val "
          f"images, {epochs} epochs a trial:")
    for name, arm in (("cached", cached), ("uncached", uncached)):
        print(f"  {name:>8}: {arm['trials']:>3} trials in {arm['wall_seconds']:>7.0f}s = {arm['trials_per_hour']:>8.1f} "
              f"trials/hour; best val accuracy {arm['best_val_accuracy']:.4f}")
    print(f"  speed-up {summary['speedup_trials_per_hour']}x trials/hour; on the {shared} configurations both ran: "
          f"best {summary['best_val_accuracy_cached_first_n']:.4f} cached vs {summary['best_val_accuracy_uncached']:.4f}, "
          f"per-trial |diff| at most {summary['paired_val_accuracy_max_abs_diff']:.4f} (same configurations: {same_values}); "
          f"cache {summary['cache_mb']} MB in {len(cache_files)} entries")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "summary": summary, "cached": cached, "uncached": uncached},
                              indent=2))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
