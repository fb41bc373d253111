"""Held-out scores for choosing an ensemble: cross-fitting on the validation images.

A selection chosen and scored on the same images flatters the chosen ones, the more so the
more trials it picks from. Cross-fitting splits the val images in two stratified halves,
chooses on one half and predicts the other, both ways; every val image is then predicted by
a selection that never saw it, and the metrics of those predictions are the method's
held-out score. Promotion compares methods on these scores, and serves an ensemble only
when its held-out gain over the best single trial pays for its inference cost (`margin`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from search.ensembles.selection import Selection, score_of, scores, weighted_average

PARTS = 2
# A held-out gain must be worth more than this many val images, whatever the cost...
MIN_IMAGES = 2
# ...and, for accuracy-like objectives, this much per extra single model of inference cost.
GAIN_PER_COST = 0.005
# For log-loss, the relative decrease asked per extra single model of inference cost.
LOSS_GAIN_PER_COST = 0.02

Chooser = Callable[[Mapping[str, np.ndarray], np.ndarray], Selection]


def parts(labels: np.ndarray, seed: int, count: int = PARTS) -> list[np.ndarray]:
    """`count` disjoint sets of val indices covering them all, each class dealt out in turn
    after a seeded shuffle (so each part holds about as many of each class)."""
    rng = np.random.default_rng(seed)
    dealt: list[list[int]] = [[] for _ in range(count)]
    offset = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        for i, index in enumerate(members):
            dealt[(i + offset) % count].append(int(index))
        offset += len(members)  # a class of odd size does not always give its extra to part 0
    return [np.array(sorted(p), dtype=np.int64) for p in dealt]


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """A method's cross-fitted predictions scored on all val images, and what each part chose."""

    values: Mapping[str, float]  # scores(): val_accuracy, val_f1, val_top5_accuracy, val_loss
    chosen: tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]  # (members, weights) chosen without each part


def cross_fit(choose: Chooser, probabilities: Mapping[str, np.ndarray], labels: np.ndarray,
              split: Sequence[np.ndarray]) -> HeldOut:
    """Choose with `choose` on all parts but one, predict that one; each part in turn."""
    first = next(iter(probabilities.values()))
    predicted = np.zeros(first.shape, dtype=np.float64)
    chosen = []
    for k, part in enumerate(split):
        rest = np.concatenate([p for j, p in enumerate(split) if j != k])
        selection = choose({t: p[rest] for t, p in probabilities.items()}, labels[rest])
        predicted[part] = weighted_average({t: probabilities[t][part] for t in selection.members},
                                           selection.members, selection.weights)
        chosen.append((selection.members, selection.weights))
    return HeldOut(scores(predicted, labels), tuple(chosen))


def higher_is_better(objective: str) -> bool:
    return objective != "val_loss"


def gain(objective: str, ensemble: Mapping[str, float], single: Mapping[str, float]) -> float:
    """How much better the ensemble's held-out objective is (positive: better)."""
    if higher_is_better(objective):
        return float(ensemble[objective] - single[objective])
    return float(single[objective] - ensemble[objective])


def relative_cost(members: Sequence[str], single: str, sizes: Mapping[str, float]) -> float:
    """Inference cost of the members (each run once, whatever its weight) in single models:
    their saved size over the best single trial's, at least their count when sizes are unknown."""
    if all(sizes.get(m) for m in (*members, single)):
        return float(sum(sizes[m] for m in set(members)) / sizes[single])
    return float(len(set(members)))


def margin(objective: str, val_images: int, cost: float, single: Mapping[str, float]) -> float:
    """The held-out gain an ensemble of `cost` single models must reach to be promoted."""
    extra = max(1.0, cost - 1.0)
    if higher_is_better(objective):
        return max(MIN_IMAGES / max(1, val_images), GAIN_PER_COST * extra)
    return LOSS_GAIN_PER_COST * extra * float(single[objective])


def margin_rule(objective: str) -> str:
    if higher_is_better(objective):
        return (f"held-out {objective} gain >= max({MIN_IMAGES} val images, {GAIN_PER_COST} per extra single model "
                "of inference cost)")
    return f"held-out log-loss {LOSS_GAIN_PER_COST:.0%} lower per extra single model of inference cost"


def file_sizes(paths: Mapping[str, Path]) -> dict[str, float]:
    """Saved model sizes in MB (0 for a file that cannot be read)."""
    sizes = {}
    for trial, path in paths.items():
        try:
            sizes[trial] = Path(path).stat().st_size / 1e6
        except OSError:
            sizes[trial] = 0.0
    return sizes


@dataclasses.dataclass(frozen=True)
class Choice:
    """What promotion serves and why, with every candidate's held-out figures and cost."""

    promoted: Selection
    reason: str
    held: Mapping[str, HeldOut]  # by method; empty when val is too small to split
    costs: Mapping[str, float]  # by method, in single models
    margin: float | None  # the gain the best ensemble had to reach (None: no held-out figures)


def choose(candidates: Sequence[Selection], probabilities: Mapping[str, np.ndarray], labels: np.ndarray, *,
           choosers: Mapping[str, Chooser], sizes: Mapping[str, float], seed: int, method: str = "auto") -> Choice:
    """Score each candidate's method held-out, then pick: `method` when it is not "auto", else
    the best ensemble when its held-out gain over the best single trial reaches `margin`."""
    single = candidates[0]
    objective = single.objective
    costs = {c.method: relative_cost(c.members, single.members[0], sizes) for c in candidates}
    split = parts(labels, seed)
    held = {c.method: cross_fit(choosers[c.method], probabilities, labels, split) for c in candidates} \
        if all(len(p) for p in split) else {}
    ensembles = list(candidates[1:])
    if held:  # the better held-out, the cheaper on ties; top-k first on ties: the report's method
        best = max(ensembles, key=lambda s: (score_of(held[s.method].values, objective), -costs[s.method]))
    else:
        best = max(ensembles, key=lambda s: s.score)
    name = objective.removeprefix("val_")
    if method != "auto":
        promoted = next(c for c in candidates if c.method == method)
        return Choice(promoted, f"chosen with --method {method}", held, costs, None)
    if len(probabilities) == 1:
        return Choice(single, "only one trial has finished", held, costs, None)
    if not held:
        return Choice(single, f"val has too few images ({len(labels)}) to score an ensemble on images it was not "
                              "chosen on", held, costs, None)
    required = margin(objective, len(labels), costs[best.method], held[single.method].values)
    won = gain(objective, held[best.method].values, held[single.method].values)
    figures = (f"held-out {name} {held[best.method].values[objective]:.4f} vs "
               f"{held[single.method].values[objective]:.4f} (in-sample {best.objective_value:.4f} vs "
               f"{single.objective_value:.4f}), a gain of {won:+.4f} for {costs[best.method]:.1f}x the inference "
               f"cost, the margin being {required:.4f}")
    if best.size > 1 and won >= required:
        return Choice(best, f"{best.method.replace('_', '-')} beats the best single trial {single.members[0]}: "
                            + figures, held, costs, required)
    return Choice(single, "no ensemble beats it by the margin on images it was not chosen on: the best, "
                          f"{best.method.replace('_', '-')} ({'+'.join(best.members)}), has " + figures,
                  held, costs, required)
