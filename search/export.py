"""python -m search.export SPACE: models for phones (TFLite), checked and sized (Level 3).

Each model is written as float32, float16 and dynamic-range int8 `.tflite` files; each file
runs on the validation images and its top-1 is compared with the Keras model's (the
agreement). The table of parameters, Keras size and TFLite sizes - the report's comparison
of its Level 2 and Level 3 models - goes to runs/<space>/export/sizes.csv and to MLflow.
By default one model per backbone searched (its best trial); `--trial`, `--champion` or
`--all` choose otherwise.
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

VARIANTS = ("float32", "float16", "int8")
BATCH = 32


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
        row.update({f"tflite_{v}_mb": round(self.tflite_mb[v], 2) for v in VARIANTS})
        row.update({f"agreement_{v}": round(self.agreement[v], 4) for v in VARIANTS})
        row["val_images"] = self.images
        return row


def convert(model: Any, folder: Path, stem: str) -> dict[str, Path]:
    """Write `stem`.{float32,float16,int8}.tflite under `folder`; return them by variant."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    # Keras 3 models reach the converter through a SavedModel: export it once, convert three times.
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        for variant in VARIANTS:
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if variant != "float32":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: int8 weights, float activations
            if variant == "float16":
                converter.target_spec.supported_types = [tf.float16]
            path = folder / f"{stem}.{variant}.tflite"
            path.write_bytes(converter.convert())
            written[variant] = path
    return written


def _interpreter(path: Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's notice that LiteRT replaces it
        return Interpreter(model_path=str(path))


def tflite_predict(path: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities of a .tflite model for (n, size, size, 3) float32 images."""
    interpreter = _interpreter(path)
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    results, shape = [], None
    for start in range(0, len(images), BATCH):
        batch = images[start:start + BATCH]
        if batch.shape != shape:
            interpreter.resize_tensor_input(source["index"], list(batch.shape))
            interpreter.allocate_tensors()
            shape = batch.shape
        interpreter.set_tensor(source["index"], batch.astype(source["dtype"]))
        interpreter.invoke()
        results.append(np.array(interpreter.get_tensor(target["index"])))
    return np.concatenate(results)


def val_images(data: Any, size: int, limit: int | None) -> np.ndarray:
    """The validation images at `size`, as the model sees them in training (0..255 floats)."""
    batches = []
    count = 0
    for images, _ in data.dataset("val", size, BATCH):
        batches.append(np.asarray(images, dtype=np.float32))
        count += len(batches[-1])
        if limit and count >= limit:
            break
    stacked = np.concatenate(batches)
    return stacked[:limit] if limit else stacked


def export_model(path: Path, name: str, backbone: str, data: Any, out: Path, limit: int | None) -> Exported:
    """Convert one saved model, compare its three TFLite files with it on val, size them."""
    import keras

    from search.models.build import count_params, model_size_mb

    model = keras.models.load_model(path, compile=False)
    images = val_images(data, int(model.input_shape[1]), limit)
    reference = model.predict(images, batch_size=BATCH, verbose=0).argmax(axis=1)
    files = convert(model, out, name)
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
        "Export a search's models to TFLite (float32, float16, int8), check them, size them.",
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

        from search.runs.saved import locate

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
    table = pd.DataFrame(rows)
    csv = out / "sizes.csv"
    table.to_csv(csv, index=False)
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(f"\n{table.to_string(index=False)}\n{csv}")
    low = table[[f"agreement_{v}" for v in VARIANTS]].min(axis=None)
    if low < 0.99:
        print(f"warning: a TFLite model agrees with its Keras model on only {low:.1%} of val images' top-1.",
              file=sys.stderr)
    if not args.no_tracking:
        from search.tracking.client import attach

        print(attach(saved.folder, [csv], "export"))
    return 0


if __name__ == "__main__":
    entry(main)
