"""python -m search.export SPACE: models for phones (TFLite), checked and sized (Level 3).

Each model is written as four `.tflite` files: float32; float16 weights; int8, dynamic range
(int8 weights, float activations); and int8-full (int8 weights and activations, calibrated on
training images, with a uint8 input that takes the camera's 0..255 pixels as they are and a
uint8 output, what integer-only phone accelerators run). Each file runs on the validation
images and its top-1 is compared with the Keras model's (the agreement). The class names go
beside them as labels.txt, one per line (TFLite's convention), and into each file's metadata
under "labels". The table of parameters, Keras size and TFLite sizes - the report's
comparison of its Level 2 and Level 3 models - goes to runs/<space>/export/sizes.csv and to
MLflow. By default one model per backbone searched (its best trial); `--trial`, `--champion`
or `--all` choose otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.cli import Parser, entry, fail
from search.errors import SearchError

VARIANTS = ("float32", "float16", "int8", "int8-full")
BATCH = 32
# Training images the full-integer conversion calibrates its activation ranges on: a few
# hundred cover the ranges; more only lengthen the conversion.
CALIBRATION_IMAGES = 200
LABELS = "labels.txt"


@dataclasses.dataclass
class Exported:
    """One model's row of the size table."""

    name: str
    backbone: str
    params: int
    keras_mb: float
    tflite_mb: dict[str, float]
    agreement: dict[str, float]
    images: int

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"model": self.name, "backbone": self.backbone, "params": self.params,
                               "keras_mb": round(self.keras_mb, 2)}
        row.update({f"tflite_{column(v)}_mb": round(self.tflite_mb[v], 2) for v in VARIANTS})
        row.update({f"agreement_{column(v)}": round(self.agreement[v], 4) for v in VARIANTS})
        row["val_images"] = self.images
        return row


def column(variant: str) -> str:
    """A variant's name in sizes.csv's columns: int8-full -> int8_full."""
    return variant.replace("-", "_")


def convert(model: Any, folder: Path, stem: str, calibration: np.ndarray, labels: Sequence[str]) -> dict[str, Path]:
    """Write `stem`.<variant>.tflite under `folder` for every variant, with `labels` in its
    metadata; `calibration` (0..255 float images) sets int8-full's activation ranges."""
    import tensorflow as tf

    from search.runs import atomic

    folder.mkdir(parents=True, exist_ok=True)
    written = {}

    def representative() -> Any:
        for image in calibration:
            yield [image[None].astype(np.float32)]

    # Keras 3 models reach the converter through a SavedModel: export it once, convert each variant.
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        for variant in VARIANTS:
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if variant != "float32":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: int8 weights, float activations
            if variant == "float16":
                converter.target_spec.supported_types = [tf.float16]
            if variant == "int8-full":
                converter.representative_dataset = representative
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # fail, not fall back to float
                converter.inference_input_type = tf.uint8  # calibrated on 0..255: scale 1, zero point 0
                converter.inference_output_type = tf.uint8
            path = folder / f"{stem}.{variant}.tflite"
            atomic.write_bytes(path, with_labels(converter.convert(), labels))
            written[variant] = path
    return written


def with_labels(flatbuffer: bytes, labels: Sequence[str]) -> bytes:
    """The model with its class names as metadata "labels" (one per line, as labels.txt).

    TFLite's Task Library reads a label map from "TFLITE_METADATA", a flatbuffer written by
    the tflite-support package, which cannot be installed beside TensorFlow 2.21: its last
    release (0.4.4) needs protobuf < 4, TensorFlow >= 6.31. This plain entry is what
    TensorFlow's own flatbuffer tools write and read back; apps read labels.txt beside the model.
    """
    from search import compat

    return compat.tflite_with_metadata(flatbuffer, b"labels", "\n".join(labels).encode("utf-8") + b"\n")


def embedded_labels(path: Path) -> list[str]:
    """The class names in a .tflite file's "labels" metadata ([] when it has none)."""
    from search import compat

    data = compat.tflite_metadata(path).get(b"labels")
    return data.decode("utf-8").splitlines() if data is not None else []


def _interpreter(path: Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's notice that LiteRT replaces it
        return Interpreter(model_path=str(path))


def _quantized(batch: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Float images as an integer input tensor takes them (its scale and zero point)."""
    dtype = details["dtype"]
    scale, zero = details["quantization"]
    if not np.issubdtype(dtype, np.integer) or not scale:
        return batch.astype(dtype)
    limits = np.iinfo(dtype)
    return np.clip(np.round(batch / scale + zero), limits.min, limits.max).astype(dtype)


def tflite_predict(path: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities of a .tflite model for (n, size, size, 3) float32 images (0..255),
    an integer model's input quantized and its output dequantized."""
    from search.console import progress

    interpreter = _interpreter(path)
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    results, shape = [], None
    starts = range(0, len(images), BATCH)
    for start in progress(starts, f"checking {path.name}", total=len(images), unit="image",
                          size=lambda s: min(BATCH, len(images) - s)):
        batch = images[start:start + BATCH]
        if batch.shape != shape:
            interpreter.resize_tensor_input(source["index"], list(batch.shape))
            interpreter.allocate_tensors()
            shape = batch.shape
        interpreter.set_tensor(source["index"], _quantized(batch, source))
        interpreter.invoke()
        output = np.array(interpreter.get_tensor(target["index"]))
        scale, zero = target["quantization"]
        results.append((output.astype(np.float32) - zero) * scale if np.issubdtype(output.dtype, np.integer) and scale
                       else output)
    return np.concatenate(results)


def split_images(data: Any, split: str, size: int, limit: int | None, *, shuffle: bool = False) -> np.ndarray:
    """A split's images at `size`, as the model sees them in training (0..255 floats)."""
    batches = []
    count = 0
    for images, _ in data.dataset(split, size, BATCH, shuffle=shuffle, seed=0):
        batches.append(np.asarray(images, dtype=np.float32))
        count += len(batches[-1])
        if limit and count >= limit:
            break
    stacked = np.concatenate(batches)
    return stacked[:limit] if limit else stacked


def val_images(data: Any, size: int, limit: int | None) -> np.ndarray:
    """The validation images at `size` (0..255 floats), in the split's order."""
    return split_images(data, "val", size, limit)


def export_model(path: Path, name: str, backbone: str, data: Any, out: Path, limit: int | None) -> Exported:
    """Convert one saved model, compare each TFLite file with it on val, size them."""
    import keras

    from search.models.build import count_params, model_size_mb

    model = keras.models.load_model(path, compile=False)
    size = int(model.input_shape[1])
    images = val_images(data, size, limit)
    reference = model.predict(images, batch_size=BATCH, verbose=0).argmax(axis=1)
    # Shuffled: TFRecords and split folders keep a class's images together.
    calibration = split_images(data, "train", size, CALIBRATION_IMAGES, shuffle=True)
    files = convert(model, out, name, calibration, data.class_names)
    agreement = {v: float((tflite_predict(f, images).argmax(axis=1) == reference).mean()) for v, f in files.items()}
    return Exported(name=name, backbone=backbone, params=count_params(model), keras_mb=model_size_mb(path),
                    tflite_mb={v: model_size_mb(f) for v, f in files.items()}, agreement=agreement,
                    images=len(images))


def chosen_models(space_dir: Path, args: argparse.Namespace) -> list[tuple[Path, str, str]]:
    """(model file, name, backbone) for each model to export."""
    from search.results.records import load_records

    records = [r for r in load_records(space_dir)
               if r.get("status") == "COMPLETED" and (space_dir / "trials" / r["trial_id"] / "model.keras").is_file()]
    backbone = {r["trial_id"]: str(r.get("config", {}).get("backbone", "?")) for r in records}
    if args.champion:
        from search.runs.layout import SpaceDir, served_model

        path, note = served_model(SpaceDir(space_dir))
        if note:
            print(note, file=sys.stderr)
        return [(path, path.stem, "ensemble" if path.stem == "champion" else "best")]
    if args.trial is not None:
        if args.trial not in backbone:
            raise SearchError(f"--trial {args.trial}: no completed trial with a model in {space_dir}. "
                              f"Trials with one: {', '.join(sorted(backbone)) or 'none'}.")
        return [(space_dir / "trials" / args.trial / "model.keras", f"trial-{args.trial}", backbone[args.trial])]
    if not records:
        raise SearchError(f"{space_dir} has no completed trial with a saved model to export.")
    if not args.all:  # the best trial of each backbone
        objective = "val_accuracy"
        best: dict[str, dict[str, Any]] = {}
        for r in records:
            score = (r.get("best") or {}).get(objective) or 0.0
            b = backbone[r["trial_id"]]
            if b not in best or score > ((best[b].get("best") or {}).get(objective) or 0.0):
                best[b] = r
        records = list(best.values())
    return [(space_dir / "trials" / r["trial_id"] / "model.keras", f"trial-{r['trial_id']}", backbone[r["trial_id"]])
            for r in records]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        "python -m search.export",
        "Export a search's models to TFLite (float32, float16, int8, int8-full), check them, size them.",
        "examples:\n  python -m search.export spaces/celeb_mobile.py            best trial of each backbone\n"
               "  python -m search.export spaces/celeb_mobile.py --champion",
    )
    p.add_saved_search()
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", metavar="ID", help="one trial's model")
    which.add_argument("--champion", action="store_true", help="the champion (else best.keras)")
    which.add_argument("--all", action="store_true", help="every completed trial, not only each backbone's best")
    p.add_argument("--out", metavar="DIR", help="where to write (default: runs/<space>/export/)")
    p.add_argument("--max-images", type=int, metavar="N", help="compare on at most N validation images (default: all)")
    p.add_argument("--no-tracking", action="store_true", help="do not log the table to MLflow")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.max_images is not None and args.max_images < 1:
            raise SearchError(f"--max-images {args.max_images}: give a number >= 1.")
        import pandas as pd

        from search.results.saved import locate

        saved = locate(args.space, Path(args.runs_dir))
        models = chosen_models(saved.space_dir, args)
        out = Path(args.out) if args.out else saved.space_dir / "export"
        data = saved.open_data()
        rows = []
        for path, name, backbone in models:
            print(f"exporting {name} ({backbone}) ...", flush=True)
            rows.append(export_model(path, name, backbone, data, out, args.max_images).row())
    except SearchError as e:
        return fail(e)
    from search.runs import atomic

    atomic.write_text(out / LABELS, "".join(f"{name}\n" for name in data.class_names))
    table = pd.DataFrame(rows)
    csv = out / "sizes.csv"
    atomic.write_with(csv, lambda tmp: table.to_csv(tmp, index=False))
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(f"\n{table.to_string(index=False)}\n{csv}\n{out / LABELS}")
    low = table[[f"agreement_{column(v)}" for v in VARIANTS]].min(axis=None)
    if low < 0.99:
        print(f"warning: a TFLite model agrees with its Keras model on only {low:.1%} of val images' top-1 "
              f"(int8-full's integer activations cost the most).", file=sys.stderr)
    if not args.no_tracking:
        from search.tracking.client import attach

        print(attach(saved.folder, [csv, out / LABELS], "export"))
    return 0


if __name__ == "__main__":
    entry(main)
