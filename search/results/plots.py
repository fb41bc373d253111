"""Figures for trials and searches, as PNG files (matplotlib's Agg canvas, no pyplot).

Shared by MLflow tracking, the report and the other commands; each function draws one figure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search.runs import atomic


def figure(width: float, height: float) -> Any:
    # Figure + Agg canvas directly: no global backend or open-figure state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(drawn)
    return drawn


def save(drawn: Any, path: Path) -> Path:
    drawn.tight_layout()
    return atomic.write_with(Path(path), lambda tmp: drawn.savefig(tmp, format="png"))


def learning_curves(history: Mapping[str, Sequence[float]], path: Path, *, first_epoch: int = 0,
                    title: str = "") -> Path:
    """Loss and accuracy per epoch, train against validation, side by side."""
    drawn = figure(10, 3.8)
    for i, metric in enumerate(("loss", "accuracy")):
        axes = drawn.add_subplot(1, 2, i + 1)
        for key, label in ((metric, "train"), (f"val_{metric}", "val")):
            values = list(history.get(key, []))
            if values:
                epochs = range(first_epoch + 1, first_epoch + len(values) + 1)
                axes.plot(epochs, values, marker="o", markersize=3, label=label)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(True, alpha=0.3)
        axes.legend()
        axes.set_title(f"{title} {metric}".strip())
    return save(drawn, path)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
                     path: Path, *, title: str = "") -> Path:
    """Counts of true (rows) against predicted (columns) classes, with per-class recall."""
    n = len(class_names)
    matrix = np.bincount(labels.astype(int) * n + predictions.astype(int), minlength=n * n).reshape(n, n)
    side = min(14.0, 3 + 0.45 * n)
    drawn = figure(side, side * 0.85)
    axes = drawn.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    drawn.colorbar(image, ax=axes, fraction=0.046)
    ticks = range(n)
    axes.set_xticks(ticks, [str(c) for c in class_names], rotation=90 if n > 10 else 0)
    axes.set_yticks(ticks, [str(c) for c in class_names])
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if n <= 30:
        limit = matrix.max() / 2 if matrix.size else 0
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                axes.text(col, row, str(count), ha="center", va="center", fontsize=7,
                          color="white" if count > limit else "black")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    axes.set_title(f"{title} val accuracy {accuracy:.3f}".strip())
    return save(drawn, path)


def size_vs_accuracy(table: Any, path: Path, *, objective: str = "val_accuracy", title: str = "") -> Path:
    """The objective of every trial against its size: parameters (left) and saved MB (right),
    one colour per backbone; failed trials (no score) are left out of the axes."""
    drawn = figure(11, 4.2)
    scored = table[table[objective].notna() & table["params"].notna()] if len(table) else table
    groups = scored.groupby("backbone") if "backbone" in scored else [("trials", scored)]
    for i, (column, label) in enumerate((("params", "parameters (millions)"), ("size_mb", "saved model (MB)"))):
        axes = drawn.add_subplot(1, 2, i + 1)
        for name, group in groups:
            xs = group[column].astype(float) / (1e6 if column == "params" else 1)
            axes.scatter(xs, group[objective], label=str(name), alpha=0.8)
            for x, y, trial in zip(xs, group[objective], group["trial_id"]):
                axes.annotate(str(trial), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes.set_xlabel(label)
        axes.set_ylabel(objective)
        axes.grid(True, alpha=0.3)
        if len(scored):
            axes.legend(title="backbone", fontsize=8)
    drawn.suptitle(title or f"{objective} against model size, {len(scored)} trials")
    return save(drawn, path)


def schedule(rate: Callable[[int], float], epochs: int, path: Path, title: str = "") -> Path:
    """The learning rate of each epoch (as the report plotted it before training)."""
    drawn = figure(6, 3.5)
    axes = drawn.add_subplot()
    xs = list(range(max(1, int(epochs))))
    axes.plot(xs, [rate(epoch) for epoch in xs], marker="o", markersize=3)
    axes.set_xlabel("epoch")
    axes.set_ylabel("learning rate")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes.grid(True, alpha=0.3)
    axes.set_title(title or f"learning rate over {len(xs)} epochs")
    return save(drawn, path)
