"""python -m search.predict SPACE --images PATH: predict with a search's champion model.

A folder of images (or one image) gives a CSV of file, label, probability; a TFRecord test
set whose records carry `id` (Petals to the Metal) gives Kaggle's submission.csv (`id,label`),
written exactly as the report wrote it. A file, a record or an image that cannot be read is
left out and named, and the rest is predicted.

`--probabilities` adds every class's probability, for blending with other models.

`--tta N` averages the model's probabilities over each image and N-1 fixed views of it
(flips, turns, zooms) that the augmentation the model was trained with produces (none for a
model trained without augmentation); what that gains is measured on the search's validation
images and written beside the output (tta.json), and the views are applied only when they
raise val accuracy (or with --force-tta), since test-time augmentation can also cost it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.cli import Parser, entry, fail
from search.errors import SearchError

BATCH_SIZE = 64
TFRECORD_SUFFIXES = (".tfrec", ".tfrecord")
SHOWN_SKIPS = 5  # skipped inputs named one per line; the rest are counted


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


View = Callable[[Any], Any]


def probabilities(model: Any, batches: Iterable[tuple[Any, Any]], views: Sequence[View], total: int | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(the indices predicted, their class probabilities averaged over `views`) for batches of
    (indices, float images)."""
    from search.console import progress

    indices, rows = [], []
    for index, images in progress(batches, "predicting", total=total, unit="image", size=lambda b: len(b[0])):
        rows.append(np.mean([np.asarray(model.predict_on_batch(view(images))) for view in views], axis=0))
        indices.append(np.asarray(index))
    if not rows:
        return np.zeros([0], np.int64), np.zeros([0, int(model.output_shape[-1])], np.float32)
    return np.concatenate(indices), np.concatenate(rows)


def _report_skips(skipped: list[tuple[str, str]]) -> None:
    for name, reason in skipped[:SHOWN_SKIPS]:
        print(f"warning: skipped {name}: {reason}", file=sys.stderr)
    if len(skipped) > SHOWN_SKIPS:
        print(f"warning: skipped {len(skipped) - SHOWN_SKIPS} more", file=sys.stderr)


def predict_images(model: Any, files: list[Path], root: Path, class_names: list[str], out: Path, *,
                   runs_dir: Path, max_pixels: int | None, views: Sequence[View], every_class: bool = False
                   ) -> tuple[int, list[tuple[str, str]]]:
    """Write file,label,probability for each readable image (and every class's probability when
    `every_class`); returns the rows and what was skipped."""
    import tensorflow as tf

    from search.data.folders import check_images, converted_folder, shown
    from search.ensembles.model import input_size
    from search.runs import atomic

    base = root if root.is_dir() else root.parent
    checked = check_images(files, base, {}, max_pixels=max_pixels, converted=converted_folder(runs_dir))
    skipped = [(shown(_name(f, base)), reason) for f, reason in sorted(checked.bad.items())]
    _report_skips(skipped)
    files = [f for f in files if f not in checked.bad]
    if not files:
        raise SearchError(f"--images {root}: none of the images can be read ({skipped[0][1]}).")
    size = input_size(model)
    paths = [str(checked.substitutes.get(f, f)) for f in files]
    dataset = (
        tf.data.Dataset.from_tensor_slices(paths).enumerate()
        .map(lambda i, p: (i, _pixels(tf.io.read_file(p), size)), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(BATCH_SIZE)
    )
    index, probs = probabilities(model, dataset, views, len(files))
    labels = np.argmax(probs, axis=-1)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label", "probability", *(_columns(class_names, probs) if every_class else [])])
            for i, label, row in zip(index, labels, probs):
                name = _name(files[i], base)
                every = [_probability(v) for v in row] if every_class else []
                writer.writerow([name, class_names[label] if label < len(class_names) else int(label),
                                 f"{row[label]:.6f}", *every])

    atomic.write_with(out, write)
    return len(index), skipped


def _columns(class_names: list[str], probs: np.ndarray) -> list[str]:
    """One column per class, named by the class (its index when the search did not keep names)."""
    count = probs.shape[1]
    return [str(c) for c in class_names] if len(class_names) == count else [str(i) for i in range(count)]


def _probability(value: float) -> str:
    return f"{float(value):.8f}"


def _name(file: Path, base: Path) -> str:
    return file.relative_to(base).as_posix()


def predict_submission(model: Any, files: list[Path], out: Path, *, views: Sequence[View],
                       class_names: list[str] | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Write Kaggle's submission.csv (id,label) for test records carrying `id`; returns its rows
    and what was skipped: the unreadable tail of a corrupt file, records whose image does not decode.
    With `class_names`, every class's probability goes to probabilities.csv beside it (id, one
    column per class), for blending."""
    from search.data import tfrecord
    from search.ensembles.model import input_size
    from search.runs import atomic

    skipped: list[tuple[str, str]] = []
    found = tfrecord.scan(files, "test", skipped=skipped)
    if found.labelled:
        raise SearchError(
            f"--images: the records in {files[0].parent} carry `class`, not `id`; a submission needs the "
            f"test records (image + id). Pass the test folder, e.g. tfrecords-jpeg-331x331/test."
        )
    size = input_size(model)
    # A record whose image does not decode is dropped here; its index is missing from what comes out.
    images = tfrecord.images(found, lambda data: _pixels(data, size)).ignore_errors()
    index, probs = probabilities(model, images.batch(BATCH_SIZE), views, found.count)
    ids = np.array([i.decode("utf-8", "backslashreplace") for i in found.targets])  # read by the scan, in file order
    missing = sorted(set(range(found.count)) - set(index.tolist()) - found.unreadable)  # the scan named those
    if missing:
        skipped += [(f"record id {ids[i]}", reason) for i, reason in _why_undecodable(found, missing, size)]
    _report_skips(skipped)
    if not len(index):
        raise SearchError(f"--images: none of the test records in {files[0].parent} can be read ({skipped[0][1]}).")
    predictions = np.argmax(probs, axis=-1)
    # The report's own line, so the file is byte-for-byte what it submitted.
    atomic.write_with(out, lambda tmp: np.savetxt(tmp, np.rec.fromarrays([ids[index], predictions]), fmt=["%s", "%d"],
                                                  delimiter=",", header="id,label", comments=""))
    if class_names is not None:
        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["id", *_columns(class_names, probs)])
                for record_id, row in zip(ids[index], probs):
                    writer.writerow([record_id, *(_probability(v) for v in row)])

        atomic.write_with(out.with_name("probabilities.csv"), write)
    return len(index), skipped


def _why_undecodable(found: Any, missing: list[int], size: int) -> list[tuple[int, str]]:
    """Each missing record's decoding error, read again (only when some were dropped)."""
    import tensorflow as tf

    from search.data import tfrecord
    from search.data.folders import decode_failure

    wanted = set(missing)
    reasons = []
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    for index, record in tfrecord.numbered(found):
        if int(index) in wanted:
            try:
                _pixels(tf.io.parse_single_example(record, spec)["image"], size)
                reason = "its image could not be decoded"
            except tf.errors.OpError as e:
                reason = f"its image does not decode ({decode_failure(e)})"
            reasons.append((int(index), reason))
    return reasons


def trained_policy(saved: Any, model_path: Path) -> tuple[str, str]:
    """The augmentation policy the served model was trained with, and a note when the trials
    behind it used several (the first member's is taken)."""
    from search.results.records import load_records

    folder = saved.folder
    trials: list[str] = []
    if model_path.resolve() == folder.champion.resolve() and folder.ensemble_record.is_file():
        trials = list(json.loads(folder.ensemble_record.read_text()).get("promoted", {}).get("members", []))
    elif model_path.resolve() == folder.best_model.resolve() and folder.best_record.is_file():
        trials = [str(json.loads(folder.best_record.read_text()).get("trial_id"))]
    elif model_path.parent.parent == folder.trials:
        trials = [model_path.parent.name]
    records = {r["trial_id"]: r for r in load_records(folder.path)}
    chosen = [records[t] for t in trials if t in records] or list(records.values())
    policies = list(dict.fromkeys(str((r.get("config") or {}).get("augmentation", "none")) for r in chosen))
    if not policies:
        fixed = saved.record.get("fixed", {}).get("augmentation")
        if fixed:
            return str(fixed), ""
        raise SearchError(f"--tta: no trial record in {folder.trials} says which augmentation the model was trained "
                          f"with; run without --tta.")
    note = "" if len(policies) == 1 else (f"note: the model's trials were trained with {', '.join(policies)}; "
                                          f"test-time views follow {policies[0]!r}, the first one's.")
    return policies[0], note


def measure_tta(model: Any, data: Any, views: Sequence[View]) -> dict[str, Any]:
    """Validation accuracy of the model alone and averaged over `views`, on the search's val images."""
    from search.ensembles.model import input_size

    size = input_size(model)
    plain = averaged = seen = 0
    for images, labels in data.dataset("val", size, BATCH_SIZE):
        each = [np.asarray(model.predict_on_batch(view(images))) for view in views]
        truth = np.asarray(labels)
        plain += int((each[0].argmax(axis=1) == truth).sum())
        averaged += int((np.mean(each, axis=0).argmax(axis=1) == truth).sum())
        seen += len(truth)
    if not seen:
        raise SearchError("--tta: the search's val split holds no images to measure test-time augmentation on.")
    return {"val_images": seen, "val_accuracy": plain / seen, "val_accuracy_tta": averaged / seen,
            "gain": (averaged - plain) / seen}


def _tta(args: argparse.Namespace, saved: Any, model: Any, model_path: Path, out: Path) -> tuple[list[View], str]:
    """The views to average over, and the line saying what they gain (written to tta.json too):
    only views the training augmentation could produce, applied only when they raise val
    accuracy (or with --force-tta)."""
    if args.tta == 1:
        return [lambda images: images], ""
    from search.data.augment import tta_views
    from search.ensembles.model import input_size
    from search.runs import atomic

    policy, note = trained_policy(saved, model_path)
    if note:
        print(note, file=sys.stderr)
    views = tta_views(policy, input_size(model))
    if len(views) == 1:
        raise SearchError(f"--tta {args.tta}: the model was trained with augmentation {policy!r}, which produces no "
                          "view of an image but the image itself; run without --tta.")
    if args.tta > len(views):
        raise SearchError(f"--tta {args.tta}: the model's augmentation {policy!r} gives {len(views)} views "
                          f"({', '.join(name for name, _ in views)}); use --tta {len(views)} or less.")
    views = views[:args.tta]
    measured = measure_tta(model, saved.open_data(), [fn for _, fn in views])
    applied = measured["gain"] > 0 or args.force_tta
    summary = {"policy": policy, "views": [name for name, _ in views], "model": str(model_path), **measured,
               "applied": applied}
    where = out.with_name("tta.json")
    atomic.write_json(where, summary)
    line = (f"TTA ({policy}: {', '.join(summary['views'])}): val accuracy {measured['val_accuracy']:.4f} -> "
            f"{measured['val_accuracy_tta']:.4f} ({measured['gain']:+.4f}) on {measured['val_images']} val images; ")
    if measured["gain"] > 0:
        return [fn for _, fn in views], line + f"applied; {where}"
    if args.force_tta:
        return [fn for _, fn in views], line + f"applied anyway, as --force-tta asks; {where}"
    return [views[0][1]], line + f"not applied, since it does not raise val accuracy (--force-tta applies it); {where}"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        "python -m search.predict",
        "Predict with a search's champion model (runs/<space>/champion.keras).",
        "examples:\n  python -m search.predict spaces/digits.py --images my_digits/\n"
               "  python -m search.predict spaces/flowers.py --images tfrecords-jpeg-331x331/test --tta 4",
    )
    p.add_saved_search()
    p.add_argument("--images", required=True, metavar="PATH",
                   help="a folder of images, one image, or a folder of test TFRecords carrying `id`")
    p.add_argument("--out", metavar="FILE",
                   help="where to write (default: predictions.csv, or submission.csv for TFRecords)")
    p.add_argument("--model", metavar="FILE", help="a .keras model instead of the search's champion")
    p.add_argument("--tta", type=int, default=1, metavar="N",
                   help="average over the image and N-1 views of it from the training augmentation "
                        "(default 1: no test-time augmentation); measured on val (tta.json) and applied only "
                        "when it raises val accuracy")
    p.add_argument("--force-tta", action="store_true", help="apply --tta even when it does not raise val accuracy")
    p.add_argument("--probabilities", action="store_true",
                   help="every class's probability too: one column per class in predictions.csv; for TFRecords a "
                        "probabilities.csv (id, one column per class) beside the submission")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.tta < 1:
            raise SearchError(f"--tta {args.tta}: give the number of views to average, 1 (none) or more.")
        from search.runs.layout import served_model
        from search.results.saved import locate

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
        model = _load(model_path, saved.folder)
        views, measured = _tta(args, saved, model, model_path, out)
        if kind == "tfrecord":
            rows, skipped = predict_submission(model, files, out, views=views,
                                               class_names=saved.class_names if args.probabilities else None)
        else:
            spec = saved.space.data if saved.space is not None else None
            rows, skipped = predict_images(model, files, Path(args.images), saved.class_names, out,
                                           runs_dir=saved.runs_dir, views=views, every_class=args.probabilities,
                                           max_pixels=spec.max_pixels if spec else _default_max_pixels())
    except SearchError as e:
        return fail(e)
    if measured:
        print(measured)
    left_out = f"; skipped {len(skipped)} unreadable input(s), named above" if skipped else ""
    print(f"{out}: {rows} row(s) from {model_path}{left_out}")
    return 0


def _load(path: Path, folder: Any) -> Any:
    """The model to serve; SearchError in one line when the champion does not match the digest
    ensemble.json keeps, or when the file is not a model Keras can read."""
    import keras

    from search.ensembles.champion import checked

    checked(folder, path)
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, EOFError) as e:
        again = (f"; promote it again: python -m search.ensemble {folder.name} --runs-dir {folder.path.parent}"
                 if path.resolve() == folder.champion.resolve() else "")
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise SearchError(f"{path} is not a model Keras can read ({type(e).__name__}: {first}){again}") from None


def _default_max_pixels() -> int | None:
    from search.declare import Data

    return Data().max_pixels


if __name__ == "__main__":
    entry(main)
