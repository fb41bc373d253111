"""Augmented views on cached features: how many views of each training image to keep.

    python bench/cached_views.py [--views 1,2,4,8] [--seeds 3] [--epochs 15]

`Search(cached_views=K)` keeps K views of each training image's features (view 0 plain, the
others augmented once) and draws one per image per epoch. More views mean more variety and K
backbone passes to build them. This trains the same head (the same seeds) on the same
Fashion-MNIST images as `bench/frozen_heads.py --quick` (MobileNetV2 at 96 px, pretrained on
other Fashion-MNIST images) with the `faces` policy, for each K, and prints the median best
val accuracy over the seeds and the seconds spent building the views.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import frozen_heads  # noqa: E402 - bench/ is not a package


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", default="1,2,4,8")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="views 1 and 2, one seed, 3 epochs")
    p.add_argument("--out", default="runs/bench/cached_views.json")
    args = p.parse_args(argv)
    views = [1, 2] if args.quick else [int(v) for v in args.views.split(",")]
    seeds, epochs = (1, 3) if args.quick else (args.seeds, args.epochs)

    import tensorflow as tf

    from search.data.dataset import open_data
    from search.declare import Data
    from search.engine import trial
    from search.hparams import TrialConfig
    from search.models.features import FeatureCache

    mode = frozen_heads.QUICK
    work = Path("runs/bench/frozen_heads")
    weights = frozen_heads.pretrain(work / f"{mode.backbone}_{mode.size}_fashion_notop.weights.h5", mode.backbone,
                                    mode.size, 300, 3)
    root = frozen_heads.write_folders(work / f"fashion-{mode.train_per_class}-{mode.val_per_class}",
                                      mode.train_per_class, mode.val_per_class, skip=300)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = open_data(Data(str(root)), runs_dir=Path(tmp))
        config = TrialConfig(backbone=mode.backbone, weights=str(weights.resolve()), image_size=mode.size,
                             fine_tune="frozen", batch_size=32, head_width=512, dropout=0.2, learning_rate=1e-3,
                             augmentation="faces")
        for count in views:
            cache = FeatureCache(Path(tmp) / f"features-{count}")
            scores, build = [], 0.0
            for seed in range(seeds):
                started = time.monotonic()
                trained = trial.train(config, data, tf.distribute.get_strategy(), epochs=epochs, seed=seed,
                                      shuffle_seed=seed, feature_cache=cache, cached_views=count)
                if seed == 0:
                    build = time.monotonic() - started - trained.seconds
                scores.append(max(trained.history["val_accuracy"]))
            row = {"views": count, "best_val_accuracy": round(statistics.median(scores), 4),
                   "scores": [round(s, 4) for s in scores], "build_seconds": round(build, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
