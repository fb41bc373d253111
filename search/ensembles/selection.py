"""Choosing an ensemble from finished trials' validation probabilities, with numpy only.

Two methods: the report's top-k softmax averaging, and greedy ensemble selection with
replacement (Caruana et al., 2004, "Ensemble selection from libraries of models"), as
auto-sklearn and AutoGluon use it. Both are scored on val by the search's own objective
(val accuracy, macro F1, top-5 accuracy or log-loss) with log-loss breaking ties, so a
selection never needs a model to predict again and follows what the search optimised.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import reduce

import numpy as np

from search import metrics

Score = tuple[float, float]
# The objectives a selection can follow; training metrics fall back to val accuracy.
FOLLOWED = ("val_accuracy", "val_f1", "val_top5_accuracy", "val_loss")


def followed(objective: str) -> str:
    return objective if objective in FOLLOWED else "val_accuracy"


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every validation metric of an averaged prediction (val_loss is the log-loss)."""
    return {**metrics.validation_metrics(probabilities, labels), "val_loss": metrics.log_loss(probabilities, labels)}


def _score(values: Mapping[str, float], objective: str) -> Score:
    """Compared as a tuple, higher is better; rounded so float noise never decides a tie."""
    loss = round(values["val_loss"], 10)
    if objective == "val_loss":
        return -loss, values["val_accuracy"]
    return values[objective], -loss


def score_of(values: Mapping[str, float], objective: str) -> Score:
    """How a prediction with these val metrics ranks by `objective` (a tuple, higher is better)."""
    return _score(values, followed(objective))


_METRIC = {
    "val_accuracy": metrics.accuracy,
    "val_f1": metrics.macro_f1,
    "val_top5_accuracy": metrics.top_k_accuracy,
}


def _quick(probabilities: np.ndarray, labels: np.ndarray, objective: str) -> Score:
    """`_score` of one prediction, computing only the two metrics it compares."""
    loss = metrics.log_loss(probabilities, labels)
    if objective == "val_loss":
        return _score({"val_loss": loss, "val_accuracy": metrics.accuracy(probabilities, labels)}, objective)
    return _score({"val_loss": loss, objective: _METRIC[objective](probabilities, labels)}, objective)


@dataclasses.dataclass(frozen=True)
class Selection:
    """Members (trial ids) with integer weights, and how their weighted average scores on val."""

    method: str  # "best_single", "top_k" or "greedy"
    members: tuple[str, ...]
    weights: tuple[int, ...]
    values: Mapping[str, float]  # scores(): val_accuracy, val_f1, val_top5_accuracy, val_loss
    objective: str = "val_accuracy"

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def score(self) -> Score:
        return _score(self.values, self.objective)

    @property
    def val_accuracy(self) -> float:
        return self.values["val_accuracy"]

    @property
    def val_log_loss(self) -> float:
        return self.values["val_loss"]

    @property
    def objective_value(self) -> float:
        return self.values[self.objective]


def weighted_average(
    probabilities: Mapping[str, np.ndarray], members: Sequence[str], weights: Sequence[int]
) -> np.ndarray:
    """sum(w_i * p_i) / sum(w_i), in float64."""
    if len(members) != len(weights) or not members:
        raise ValueError(f"need as many weights as members (>= 1), got {members=} and {weights=}")
    total = float(sum(weights))
    average = np.zeros_like(probabilities[members[0]], dtype=np.float64)
    for member, weight in zip(members, weights):
        average += (weight / total) * probabilities[member].astype(np.float64)
    return average


def _selection(method: str, counts: Mapping[str, int], probabilities: Mapping[str, np.ndarray],
               labels: np.ndarray, objective: str) -> Selection:
    members = tuple(sorted(counts))
    weights = [int(counts[m]) for m in members]
    common = reduce(math.gcd, weights)
    weights = [w // common for w in weights]
    average = weighted_average(probabilities, members, weights)
    return Selection(method, members, tuple(weights), scores(average, labels), followed(objective))


def _check(probabilities: Mapping[str, np.ndarray], labels: np.ndarray) -> list[str]:
    if not probabilities:
        raise ValueError("no trials to choose from: `probabilities` is empty")
    for trial_id, p in probabilities.items():
        if p.ndim != 2 or p.shape[0] != len(labels):
            raise ValueError(
                f"trial {trial_id}: probabilities must be (n_val={len(labels)}, n_classes), got {p.shape}"
            )
    return sorted(probabilities)


def ranked(probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *, objective: str = "val_accuracy") -> list[str]:
    """Trial ids, best single trial first (ties: lower id first)."""
    ids = _check(probabilities, labels)
    by = {i: _quick(probabilities[i], labels, followed(objective)) for i in ids}
    return sorted(ids, key=lambda i: tuple(-s for s in by[i]))


def best_single(probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *,
                objective: str = "val_accuracy") -> Selection:
    """The best trial on its own."""
    best = ranked(probabilities, labels, objective=objective)[0]
    return _selection("best_single", {best: 1}, probabilities, labels, objective)


def top_k_average(probabilities: Mapping[str, np.ndarray], labels: np.ndarray, k: int = 2, *,
                  objective: str = "val_accuracy") -> Selection:
    """The k best single trials, averaged with equal weights (all of them when fewer than k)."""
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k=}")
    chosen = ranked(probabilities, labels, objective=objective)[:k]
    return _selection("top_k", dict.fromkeys(chosen, 1), probabilities, labels, objective)


def greedy_selection(probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *, rounds: int = 50,
                     objective: str = "val_accuracy") -> Selection:
    """Caruana's greedy ensemble selection with replacement.

    Each round adds the trial (possibly one already in) whose addition scores best; the
    result is the best ensemble seen over all rounds, the smallest one on ties. Round one
    picks the best single trial, so the result never scores below it on val.
    """
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds=}")
    ids = _check(probabilities, labels)
    objective = followed(objective)
    stacked = {i: probabilities[i].astype(np.float64) for i in ids}
    running = np.zeros_like(stacked[ids[0]])
    counts: Counter[str] = Counter()
    best_counts: Counter[str] = Counter()
    best_score: Score | None = None
    for size in range(1, rounds + 1):
        scored = [(_quick((running + stacked[i]) / size, labels, objective), i) for i in ids]
        # max() keeps the first of equal scores: the lowest trial id.
        round_score, pick = max(scored, key=lambda item: item[0])
        running += stacked[pick]
        counts[pick] += 1
        if best_score is None or round_score > best_score:
            best_score, best_counts = round_score, counts.copy()
    return _selection("greedy", best_counts, probabilities, labels, objective)
