"""Choosing an ensemble from finished trials' validation probabilities, with numpy only.

Two methods: the report's top-k softmax averaging, and greedy ensemble selection with
replacement (Caruana et al., 2004, "Ensemble selection from libraries of models"), as
auto-sklearn and AutoGluon use it. Both are scored by val accuracy, with val log-loss
breaking ties, so a selection never needs a model to predict again.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import reduce

import numpy as np

Score = tuple[float, float]
Metric = Callable[[np.ndarray, np.ndarray], Score]

# Keeps log-loss finite when a member puts exactly 0 on the true class.
_EPSILON = 1e-7


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true class."""
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, _EPSILON, 1.0))))


def score(probabilities: np.ndarray, labels: np.ndarray) -> Score:
    """(accuracy, -log_loss): compared as a tuple, higher is better, log-loss breaks ties."""
    # Rounded so that float summation noise never decides a tie; the trial id does.
    return accuracy(probabilities, labels), -round(log_loss(probabilities, labels), 10)


@dataclasses.dataclass(frozen=True)
class Selection:
    """Members (trial ids) with integer weights, and how their weighted average scores."""

    method: str  # "best_single", "top_k" or "greedy"
    members: tuple[str, ...]
    weights: tuple[int, ...]
    val_accuracy: float
    val_log_loss: float

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def score(self) -> Score:
        return self.val_accuracy, -self.val_log_loss

    def describe(self) -> str:
        parts = [m if w == 1 else f"{m} x{w}" for m, w in zip(self.members, self.weights)]
        return " + ".join(parts)


def weighted_average(
    probabilities: Mapping[str, np.ndarray], members: Sequence[str], weights: Sequence[int]
) -> np.ndarray:
    """sum(w_i * p_i) / sum(w_i), in float64."""
    if len(members) != len(weights) or not members:
        raise ValueError(f"need as many weights as members (>= 1), got {members=} and {weights=}")
    total = float(sum(weights))
    return sum((w / total) * probabilities[m].astype(np.float64) for m, w in zip(members, weights))


def _selection(
    method: str, counts: Mapping[str, int], probabilities: Mapping[str, np.ndarray], labels: np.ndarray
) -> Selection:
    members = tuple(sorted(counts))
    weights = [int(counts[m]) for m in members]
    common = reduce(math.gcd, weights)
    weights = [w // common for w in weights]
    average = weighted_average(probabilities, members, weights)
    return Selection(method, members, tuple(weights), accuracy(average, labels), log_loss(average, labels))


def _check(probabilities: Mapping[str, np.ndarray], labels: np.ndarray) -> list[str]:
    if not probabilities:
        raise ValueError("no trials to choose from: `probabilities` is empty")
    for trial_id, p in probabilities.items():
        if p.ndim != 2 or p.shape[0] != len(labels):
            raise ValueError(
                f"trial {trial_id}: probabilities must be (n_val={len(labels)}, n_classes), got {p.shape}"
            )
    return sorted(probabilities)


def ranked(probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *, metric: Metric = score) -> list[str]:
    """Trial ids, best single trial first (ties: lower id first)."""
    ids = _check(probabilities, labels)
    scores = {i: metric(probabilities[i], labels) for i in ids}
    return sorted(ids, key=lambda i: tuple(-s for s in scores[i]))


def best_single(probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *, metric: Metric = score) -> Selection:
    """The best trial on its own."""
    best = ranked(probabilities, labels, metric=metric)[0]
    return _selection("best_single", {best: 1}, probabilities, labels)


def top_k_average(
    probabilities: Mapping[str, np.ndarray], labels: np.ndarray, k: int = 2, *, metric: Metric = score
) -> Selection:
    """The k best single trials, averaged with equal weights (all of them when fewer than k)."""
    if k < 1:
        raise ValueError(f"`k` must be >= 1, got {k=}")
    chosen = ranked(probabilities, labels, metric=metric)[:k]
    return _selection("top_k", dict.fromkeys(chosen, 1), probabilities, labels)


def greedy_selection(
    probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *, rounds: int = 50, metric: Metric = score
) -> Selection:
    """Caruana's greedy ensemble selection with replacement.

    Each round adds the trial (possibly one already in) whose addition scores best; the
    result is the best ensemble seen over all rounds, the smallest one on ties. Round one
    picks the best single trial, so the result never scores below it on val.
    """
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds=}")
    ids = _check(probabilities, labels)
    stacked = {i: probabilities[i].astype(np.float64) for i in ids}
    running = np.zeros_like(stacked[ids[0]])
    counts: Counter[str] = Counter()
    best_counts: Counter[str] = Counter()
    best_score: Score | None = None
    for size in range(1, rounds + 1):
        scored = [(metric((running + stacked[i]) / size, labels), i) for i in ids]
        # max() keeps the first of equal scores: the lowest trial id.
        round_score, pick = max(scored, key=lambda item: item[0])
        running += stacked[pick]
        counts[pick] += 1
        if best_score is None or round_score > best_score:
            best_score, best_counts = round_score, counts.copy()
    return _selection("greedy", best_counts, probabilities, labels)
