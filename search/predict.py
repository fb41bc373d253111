"""python -m search.predict SPACE --images PATH: predict with a search's champion model.

A folder of images (or one image) gives a CSV of file, label, probability; a TFRecord test
set whose records carry `id` (Petals to the Metal) gives Kaggle's submission.csv (`id,label`),
written exactly as the report wrote it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.cli import Parser, entry, fail
from search.errors import SearchError

BATCH_SIZE = 64
TFRECORD_SUFFIXES = (".tfrec", ".tfrecord")


def _pixels(encoded: Any, size: int) -> Any:
    import tensorflow as tf

    from search.data.dataset import decode_image

    return tf.cast(decode_image(encoded, size), tf.float32)


def _find_inputs(path: Path) -> tuple[str, list[Path]]:
    from search.data.folders import IMAGE_SUFFIXES, image_files

    if not path.exists():
        raise SearchError(f"--images {path}: no such file or folder.")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in TFRECORD_SUFFIXES:
            return "tfrecord", [path]
        if suffix in IMAGE_SUFFIXES:
            return "images", [path]
        raise SearchError(
            f"--images {path}: expected a folder of images, an image ({', '.join(IMAGE_SUFFIXES)}) or "
            f"TFRecords ({', '.join(TFRECORD_SUFFIXES)}), got a {suffix or 'suffix-less'} file."
        )
    records = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TFRECORD_SUFFIXES)
    if records:
        tests = [r for r in records if r.parent.name == "test"]
        # A whole Kaggle folder (train/, val/, test/): only the test records can be submitted.
        return "tfrecord", tests if tests and len(tests) < len(records) else records
    images = image_files(path)
    if not images:
        raise SearchError(
            f"--images {path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)}) and no TFRecords."
        )
    return "images", images


def predict_images(model: Any, files: list[Path], root: Path, class_names: list[str], out: Path) -> int:
    """Write file,label,probability for each readable image; returns the number of rows."""
    import tensorflow as tf

    from search.data.folders import check_images
    from search.ensembles.model import input_size

    bad, _ = check_images(files, root, {})
    for file, reason in list(bad.items())[:5]:
        print(f"warning: skipped {file}: {reason}", file=sys.stderr)
    if len(bad) > 5:
        print(f"warning: skipped {len(bad) - 5} more unreadable file(s)", file=sys.stderr)
    files = [f for f in files if f not in bad]
    if not files:
        raise SearchError(f"--images {root}: none of the images can be decoded.")
    size = input_size(model)
    dataset = (
        tf.data.Dataset.from_tensor_slices([str(f) for f in files])
        .map(lambda p: _pixels(tf.io.read_file(p), size), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH_SIZE)
    )
    probabilities = np.asarray(model.predict(dataset, verbose=0))
    labels = np.argmax(probabilities, axis=-1)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "probability"])
        for file, label, row in zip(files, labels, probabilities):
            name = file.relative_to(root).as_posix() if root.is_dir() else file.name
            writer.writerow([name, class_names[label] if label < len(class_names) else int(label), f"{row[label]:.6f}"])
    return len(files)


def predict_submission(model: Any, files: list[Path], out: Path) -> int:
    """Write Kaggle's submission.csv (id,label) for test records carrying `id`; returns its rows."""
    import tensorflow as tf

    from search.data import tfrecord
    from search.ensembles.model import input_size

    found = tfrecord.scan(files, "test")
    if found.labelled:
        raise SearchError(
            f"--images: the records in {files[0].parent} carry `class`, not `id`; a submission needs the "
            f"test records (image + id). Pass the test folder, e.g. tfrecords-jpeg-331x331/test."
        )
    size = input_size(model)
    images = tfrecord.images(found, lambda data: _pixels(data, size))
    batches = images.batch(BATCH_SIZE).apply(tf.data.experimental.assert_cardinality(-(-found.count // BATCH_SIZE)))
    probabilities = model.predict(batches, verbose=0)
    predictions = np.argmax(probabilities, axis=-1)
    test_ids = np.array([i.decode("utf-8") for i in found.targets])  # read by the scan, in file order
    # The report's own line, so the file is byte-for-byte what it submitted.
    np.savetxt(out, np.rec.fromarrays([test_ids, predictions]), fmt=["%s", "%d"], delimiter=",",
               header="id,label", comments="")
    return len(test_ids)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        "python -m search.predict",
        "Predict with a search's champion model (runs/<space>/champion.keras).",
        "examples:\n  python -m search.predict spaces/digits.py --images my_digits/\n"
               "  python -m search.predict spaces/flowers.py --images tfrecords-jpeg-331x331/test",
    )
    p.add_saved_search()
    p.add_argument("--images", required=True, metavar="PATH",
                   help="a folder of images, one image, or a folder of test TFRecords carrying `id`")
    p.add_argument("--out", metavar="FILE",
                   help="where to write (default: predictions.csv, or submission.csv for TFRecords)")
    p.add_argument("--model", metavar="FILE", help="a .keras model instead of the search's champion")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import keras

        from search.runs.layout import served_model
        from search.runs.saved import locate

        saved = locate(args.space, Path(args.runs_dir))
        if args.model:
            model_path, note = Path(args.model), ""
            if not model_path.is_file():
                raise SearchError(f"--model {model_path}: no such file.")
        else:
            model_path, note = served_model(saved.folder)
        if note:
            print(note, file=sys.stderr)
        kind, files = _find_inputs(Path(args.images))
        out = Path(args.out or ("submission.csv" if kind == "tfrecord" else "predictions.csv"))
        model = keras.models.load_model(model_path, compile=False)
        if kind == "tfrecord":
            rows = predict_submission(model, files, out)
        else:
            rows = predict_images(model, files, Path(args.images), saved.class_names, out)
    except SearchError as e:
        return fail(e)
    print(f"{out}: {rows} row(s) from {model_path}")
    return 0


if __name__ == "__main__":
    entry(main)
