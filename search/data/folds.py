"""k-fold cross-validation splits of the labelled images (`Search(folds=k)`).

Every labelled image (train and val together, `TRAIN_VAL` order) gets one fold, stratified
by class and drawn from the search's seed: every trial of a search trains on the same folds,
so the out-of-fold probabilities of any two trials are predictions of the same images by
models that never saw them, and can be blended.
"""

from __future__ import annotations

import numpy as np

from search.errors import DataError


def check(folds: int, labels: np.ndarray, class_names: list[str], *, layout: str) -> None:
    """DataError (one line) when these images cannot be dealt into `folds` stratified folds."""
    if layout == "tfrecord":
        raise DataError(f"Search(folds={folds}) needs image folders: TFRecords are read in file order and cannot be "
                        "split into folds. Use folds=None (one train/val split), or extract the images to folders.")
    counts = np.bincount(labels, minlength=len(class_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] < folds:
        raise DataError(f"Search(folds={folds}) needs at least {folds} labelled images of every class; class "
                        f"{class_names[smallest]!r} has {counts[smallest]} (train and val together). "
                        f"Use folds={max(2, int(counts[smallest]))} or fewer, or add images.")


def assign(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each image: every class dealt out evenly, shuffled by `seed`."""
    from sklearn.model_selection import StratifiedKFold  # only for k-fold searches: loading it takes a second

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold_of[held] = fold
    return fold_of


def split_names(fold: int, folds: int, seed: int) -> tuple[str, str]:
    """The names `ImageData` knows a fold's training and held-out images by."""
    base = f"fold{fold + 1}of{folds}-seed{seed}"
    return f"{base}-train", f"{base}-val"
