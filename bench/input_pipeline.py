"""Input pipeline: images per second, and the share of a training step spent waiting for input.

    .venv/bin/python bench/input_pipeline.py [--per-class 200] [--stored 160] [--size 128] [--quick]

Real images: Debian's Fashion-MNIST (`builtin:fashion-mnist?per_class=N`), upscaled once to
`--stored` px JPEGs (photos on disk are bigger than the 28 px originals, and decoding is what
a pipeline pays), written as split class folders and as Petals-schema TFRecords (`image`
JPEG, `class` int64) holding the same bytes. Then, interleaved over `--rounds` rounds:

- throughput of `ImageData.dataset("train", size, batch, shuffle=True)` from the folders
  (augmentation none and faces) and from the TFRecords, against
  `keras.utils.image_dataset_from_directory` on the same train folder (as it comes, with
  the `.cache().prefetch()` the Keras guides add, and with the faces policy written as
  Keras's RandomRotation, RandomZoom, RandomTranslation and RandomFlip layers, the usual
  way, to compare augmentations like for like). Epoch 1 decodes; later epochs of
  ImageData read the images it keeps in memory, so they are reported apart;
- input wait: a MobileNetV2 (`--model-size` px, from scratch) trained step by step on the
  folders' pipeline with faces augmentation; the time blocked in `next(iterator)` over the
  whole step time, for the decoding epoch and for cached epochs.

On a shared 2-core CPU the model and the pipeline compete for the same cores; on a GPU the
pipeline has the CPU to itself. Prints tables and writes runs/bench/input_pipeline.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def write_images(source: Path, out: Path, stored: int) -> tuple[Path, Path]:
    """`source` split folders -> `out`/folders (JPEG, `stored` px) and `out`/records (same bytes)."""
    from PIL import Image

    folders, records = out / "folders", out / "records" / f"tfrecords-jpeg-{stored}x{stored}"
    for split in ("train", "val"):
        examples: list[bytes] = []
        for class_dir in sorted(d for d in (source / split).iterdir() if d.is_dir()):
            target = folders / split / class_dir.name
            target.mkdir(parents=True)
            label = sorted(d.name for d in (source / split).iterdir() if d.is_dir()).index(class_dir.name)
            for image_file in sorted(class_dir.iterdir()):
                buffer = io.BytesIO()
                Image.open(image_file).convert("RGB").resize((stored, stored), Image.BILINEAR).save(buffer, "JPEG", quality=90)
                (target / f"{image_file.stem}.jpg").write_bytes(buffer.getvalue())
                feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[buffer.getvalue()])),
                           "class": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
                examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
        order = np.random.default_rng(0).permutation(len(examples))
        (records / split).mkdir(parents=True)
        shards = 4 if split == "train" else 1
        for shard, part in enumerate(np.array_split(order, shards)):
            with tf.io.TFRecordWriter(str(records / split / f"{shard:02d}-{len(part)}.tfrec")) as writer:
                for i in part:
                    writer.write(examples[i])
    return folders, records.parent


def open_image_data(root: Path, runs_dir: Path) -> Any:
    from search.data.dataset import open_data
    from search.declare import Data

    return open_data(Data(str(root)), runs_dir=runs_dir, seed=0)


def epochs_rate(make: Callable[[], tf.data.Dataset], epochs: int) -> tuple[float, float]:
    """(images/s of epoch 1, images/s of epochs 2..) over one fresh pipeline."""
    ds = make()
    rates = []
    for _ in range(epochs):
        started, images = time.perf_counter(), 0
        for x, _ in ds:
            images += int(x.shape[0])
        rates.append(images / (time.perf_counter() - started))
    return rates[0], statistics.median(rates[1:])


def input_wait(data: Any, model_size: int, batch: int, steps_after: int) -> dict[str, float]:
    """Train MobileNetV2 step by step on the folders' pipeline; time blocked in next() per phase."""
    import keras

    from search.models import build as models
    from search.hparams import TrialConfig

    config = TrialConfig(backbone="MobileNetV2", weights="none", image_size=model_size, batch_size=batch,
                         augmentation="faces")
    keras.utils.set_random_seed(0)
    model = models.build_model(config, data.num_classes)
    models.compile_model(model, config)
    ds = data.dataset("train", model_size, batch, augmentation="faces", shuffle=True, seed=0, repeat=True)
    first_epoch = -(-data.count("train") // batch)
    warmup = model.train_on_batch(*next(iter(data.dataset("val", model_size, batch))))  # traces the step
    del warmup
    iterator = iter(ds)
    phases = {"decoding epoch": [0.0, 0.0], "cached epochs": [0.0, 0.0]}
    for step in range(first_epoch + steps_after):
        phase = phases["decoding epoch" if step < first_epoch else "cached epochs"]
        started = time.perf_counter()
        x, y = next(iterator)
        got = time.perf_counter()
        model.train_on_batch(x, y)
        phase[0] += got - started
        phase[1] += time.perf_counter() - started
    keras.backend.clear_session()
    return {name: round(100 * wait / total, 2) for name, (wait, total) in phases.items()} | {
        "step_ms_cached": round(1000 * phases["cached epochs"][1] / steps_after, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=200, help="Fashion-MNIST images per class and split (default 200)")
    p.add_argument("--stored", type=int, default=160, help="pixel size of the JPEGs on disk (default 160)")
    p.add_argument("--size", type=int, default=128, help="pipeline image size (default 128)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="epochs per pipeline and round: 1 decoding, the rest cached")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--model-size", type=int, default=64, help="image size of the input-wait model (default 64)")
    p.add_argument("--wait-steps", type=int, default=60, help="cached steps timed for input wait (default 60)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 images per class, 1 round, 2 epochs")
    p.add_argument("--out", type=Path, default=Path("runs/bench/input_pipeline.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.per_class, args.rounds, args.epochs, args.stored, args.size, args.wait_steps = 20, 1, 2, 64, 48, 5
    import keras

    from search.data import builtin as _builtin

    tmp = Path(tempfile.mkdtemp(prefix="bench-input-"))
    source = _builtin.materialise(f"builtin:fashion-mnist?per_class={args.per_class}", tmp / "runs")
    folders, records = write_images(source, tmp / "images", args.stored)
    size, batch = args.size, args.batch

    def framework(root: Path, augmentation: str) -> Callable[[], tf.data.Dataset]:
        def make() -> tf.data.Dataset:  # a new ImageData: nothing in memory yet
            data = open_image_data(root, tmp / "runs")
            return data.dataset("train", size, batch, augmentation=augmentation, shuffle=True, seed=0)
        return make

    def keras_utility(tuned: bool, augmented: bool = False) -> Callable[[], tf.data.Dataset]:
        def make() -> tf.data.Dataset:
            ds = keras.utils.image_dataset_from_directory(
                folders / "train", image_size=(size, size), batch_size=batch, shuffle=True, seed=0, verbose=False)
            if augmented:  # the report's faces policy the usual way: one Keras layer per transform
                layers = keras.Sequential([
                    keras.layers.RandomRotation(10 / 360, fill_mode="nearest", seed=0),
                    keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=1),
                    keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=2),
                    keras.layers.RandomFlip("horizontal", seed=3),
                ])
                ds = ds.map(lambda x, y: (layers(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
                return ds.prefetch(tf.data.AUTOTUNE)
            return ds.cache().prefetch(tf.data.AUTOTUNE) if tuned else ds
        return make

    variants = {
        "search: folders, no augmentation": framework(folders, "none"),
        "search: folders, faces augmentation": framework(folders, "faces"),
        "search: TFRecords, no augmentation": framework(records, "none"),
        "keras image_dataset_from_directory": keras_utility(False),
        "keras utility + cache + prefetch": keras_utility(True),
        "keras utility + faces as Keras layers": keras_utility(False, augmented=True),
    }
    for make in variants.values():  # warm-up: imports, first traces, file system cache
        epochs_rate(make, 2)
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, make in variants.items():
            measured[name].append(epochs_rate(make, args.epochs))
    # The same policy both ways: our one-warp faces layer against Keras's four layers.
    faces, keras_faces = measured["search: folders, faces augmentation"], measured["keras utility + faces as Keras layers"]
    faces_vs_keras_layers = {
        "epoch1": round(statistics.median(r[0] / k[0] for r, k in zip(faces, keras_faces)), 2),
        "later": round(statistics.median(r[1] / k[1] for r, k in zip(faces, keras_faces)), 2)}
    rows = {name: {"epoch1_images_per_s": round(statistics.median(r[0] for r in runs)),
                   "later_epochs_images_per_s": round(statistics.median(r[1] for r in runs))}
            for name, runs in measured.items()}
    reference = measured["keras image_dataset_from_directory"]
    for name, row in rows.items():  # per round, side by side, then the median
        row["epoch1_vs_keras"] = round(statistics.median(r[0] / k[0] for r, k in zip(measured[name], reference)), 2)
        row["later_vs_keras"] = round(statistics.median(r[1] / k[1] for r, k in zip(measured[name], reference)), 2)

    wait = input_wait(open_image_data(folders, tmp / "runs"), args.model_size, batch, args.wait_steps)
    summary = {
        "data": f"Fashion-MNIST, {args.per_class} per class (train {10 * args.per_class} images), "
                f"stored as {args.stored} px JPEG",
        "image_size": size, "batch_size": batch, "epochs": args.epochs, "rounds": args.rounds,
        "throughput": rows, "faces_vs_keras_layers": faces_vs_keras_layers,
        "input_wait_percent": wait, "input_wait_model": f"MobileNetV2 from scratch at {args.model_size} px, "
                                                        f"batch {batch}, faces augmentation, folders",
        "targets": "at least as fast as keras.utils.image_dataset_from_directory; under 5% of step time waiting",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"\ntrain pipeline, {size} px, batch {batch}, {summary['data']} (median of {args.rounds} rounds)")
    print(f"{'pipeline':<38} {'epoch 1 img/s':>13} {'x keras':>7} {'later img/s':>11} {'x keras':>7}")
    for name, r in rows.items():
        print(f"{name:<38} {r['epoch1_images_per_s']:>13} {r['epoch1_vs_keras']:>7} "
              f"{r['later_epochs_images_per_s']:>11} {r['later_vs_keras']:>7}")
    print(f"faces augmentation against the same policy as Keras layers on the Keras utility: "
          f"{faces_vs_keras_layers['epoch1']}x in epoch 1, {faces_vs_keras_layers['later']}x later")
    print(f"input wait ({summary['input_wait_model']}): {wait['decoding epoch']}% of step time in the decoding "
          f"epoch, {wait['cached epochs']}% in cached epochs ({wait['step_ms_cached']} ms per step); target < 5%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
