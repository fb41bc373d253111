"""What a trial is scored by: the metrics it reports, which way is better, and how they are computed.

`METRICS` is the vocabulary of `Search(objective=...)`: every metric a trial logs per epoch
(to trials.csv, MLflow and the console) with its direction. The validation metrics are
computed from the validation pass's probabilities (`validation_metrics`), once per epoch,
with numpy only: the objective, early stopping, pruning, the leaderboard and the ensemble all
read the same numbers. `COSTS` are the second objectives of a multi-objective search.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from search.errors import SpaceError, did_you_mean

# Keeps log-loss finite when a model puts exactly 0 on the true class.
_EPSILON = 1e-7
TOP_K = 5


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    direction: str  # "max" or "min"
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("val_accuracy", "max", "share of validation images whose most probable class is right"),
    Metric("val_loss", "min", "cross-entropy on the validation images (as Keras computes it)"),
    Metric("val_f1", "max", "macro F1 on the validation images: the mean over classes of F1 (Petals to the Metal's score)"),
    Metric("val_top5_accuracy", "max", "share of validation images whose class is among the 5 most probable"),
    Metric("accuracy", "max", "training accuracy, over the epoch's batches"),
    Metric("loss", "min", "training loss, over the epoch's batches"),
)}

COSTS = {
    "params": "parameters",
    "size_mb": "saved size (MB)",
    "latency_ms": "latency, 1 image (ms)",
}


def direction(name: str) -> str:
    """"max" or "min" for a metric of `METRICS`."""
    return METRICS[name].direction if name in METRICS else ("min" if "loss" in name else "max")


def better(a: float, b: float | None, name: str) -> bool:
    """Whether score `a` beats `b` (None: nothing yet) on metric `name`."""
    if b is None:
        return True
    return a < b if direction(name) == "min" else a > b


def check_objective(name: object) -> str:
    """`name` if it is a metric a trial reports, else SpaceError naming the choices."""
    if name not in METRICS:
        raise SpaceError(
            f"Search(objective={name!r}) is not a metric a trial reports.{did_you_mean(str(name), METRICS)} "
            f"Use one of {', '.join(METRICS)}."
        )
    return str(name)


def check_cost(name: object) -> str | None:
    if name is not None and name not in COSTS:
        raise SpaceError(f"Search(minimize={name!r}) must be None or one of {', '.join(COSTS)}."
                         f"{did_you_mean(str(name), COSTS)}")
    return None if name is None else str(name)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, _EPSILON, 1.0))))


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int = TOP_K) -> float:
    """Share of rows whose label is among the k most probable classes."""
    k = min(k, probabilities.shape[-1])
    top = np.argpartition(-probabilities, k - 1, axis=-1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def confusion(predictions: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Counts of true (rows) against predicted (columns) classes."""
    return np.bincount(labels.astype(int) * classes + predictions.astype(int), minlength=classes * classes
                       ).reshape(classes, classes)


def macro_f1(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean over classes of F1 = 2 TP / (2 TP + FP + FN), as scikit-learn's
    `f1_score(average="macro")`: classes absent from both labels and predictions are left
    out, classes predicted but never true count as 0."""
    classes = probabilities.shape[-1]
    matrix = confusion(np.argmax(probabilities, axis=-1), labels, classes)
    true_positive = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    present = (predicted + actual) > 0
    if not present.any():
        return 0.0
    f1 = 2 * true_positive[present] / (predicted[present] + actual[present])
    return float(np.mean(f1))


def per_class_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class with no validation image)."""
    classes = probabilities.shape[-1]
    matrix = confusion(np.argmax(probabilities, axis=-1), labels, classes)
    actual = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(actual > 0, np.diag(matrix) / actual, np.nan)


def validation_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """val_accuracy, val_f1 and val_top5_accuracy of one validation pass (val_loss is Keras')."""
    return {
        "val_accuracy": accuracy(probabilities, labels),
        "val_f1": macro_f1(probabilities, labels),
        "val_top5_accuracy": top_k_accuracy(probabilities, labels),
    }
