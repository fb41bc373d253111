"""Every word a space file may use, read from the registries that define it.

`python -m search.run --list` prints it; `make docs` writes it into README.md (between the
`<!-- vocabulary:NAME -->` markers) so that the README's tables are the code's.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

from search import metrics
from search.data.augment import POLICIES
from search.engine.algorithms import ALGORITHMS
from search.hparams import DEFAULTS, FINE_TUNE_MODES, POOLINGS
from search.models.backbones import BACKBONES, PREPROCESSING, WEIGHTS
from search.models.optimizers import OPTIMIZERS
from search.models.schedules import SCHEDULES

# What each hyperparameter means; its values come from the registries.
MEANING = {
    "backbone": "the pretrained network under the head",
    "weights": "what it starts from, or a weights file's path",
    "fine_tune": "which layers train",
    "fine_tune_layers": "how many last layers train with `top`",
    "image_size": "pixels (square); the pipeline resizes",
    "batch_size": "per replica (the global batch: times the replicas)",
    "pooling": "global pooling after the backbone",
    "head_batchnorm": "BatchNormalization after the pooling and each Dense",
    "head_layers": "Dense layers before the softmax, each half as wide",
    "head_width": "the first Dense layer's width",
    "dropout": "before each Dense layer, in [0, 1)",
    "optimizer": "the optimizer",
    "learning_rate": "the peak rate (warmup_exp's LR_MAX, step's first)",
    "schedule": "the learning-rate schedule",
    "augmentation": "the augmentation policy",
    "label_smoothing": "in [0, 1)",
    "probe_epochs": "`probe_then_all`'s head-only epochs",
    "fine_tune_learning_rate": "the peak rate after them (the schedule starts anew)",
}
WORDS: dict[str, Iterable[str]] = {"weights": WEIGHTS, "fine_tune": FINE_TUNE_MODES, "pooling": POOLINGS, "optimizer": OPTIMIZERS,
         "schedule": SCHEDULES, "augmentation": POLICIES}


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def hyperparameters() -> str:
    rows = []
    for name, default in DEFAULTS.items():
        values = ", ".join(f"`{w}`" for w in WORDS[name]) if name in WORDS else ""
        rows.append((f"`{name}`", f"`{default}`", MEANING[name] + (f": {values}" if values else "")))
    return _table(("name", "default", "meaning and values"), rows)


def backbones() -> str:
    rows = [(f"`{b.name}`", PREPROCESSING[b.preprocessing], b.min_size,
             ", ".join(b.weights) + (f" ({b.imagenet_size} px)" if b.imagenet_size else ""))
            for b in BACKBONES.values()]
    return _table(("backbone", "input scaled", "min px", "weights"), rows)


def words() -> str:
    sections = [
        ("schedule", {k: v.description for k, v in SCHEDULES.items()}),
        ("augmentation", {k: v.description for k, v in POLICIES.items()}),
        ("optimizer", {k: v.description for k, v in OPTIMIZERS.items()}),
        ("algorithm", {k: a.description + (f" (needs {a.needs})" if a.needs else "") for k, a in ALGORITHMS.items()}),
        ("objective", {k: f"{m.description}; {'higher' if m.direction == 'max' else 'lower'} is better"
                       for k, m in metrics.METRICS.items()}),
        ("minimize", dict(metrics.COSTS)),
    ]
    return _table(("setting", "value", "meaning"),
                  ((f"`{setting}`", f"`{value}`", meaning) for setting, values in sections
                   for value, meaning in values.items()))


TABLES = {"hyperparameters": hyperparameters, "words": words, "backbones": backbones}
_BLOCK = re.compile(r"(<!-- vocabulary:(\w+) -->\n)(?:.*?\n)?(<!-- /vocabulary -->)", re.DOTALL)


def render(text: str) -> str:
    """`text` with every vocabulary block replaced by the registries' current table."""
    return _BLOCK.sub(lambda m: m[1] + TABLES[m[2]]() + "\n" + m[3], text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--write"]:  # make docs
        for path in map(Path, args[1:]):
            path.write_text(render(path.read_text()))
        return 0
    for name, table in TABLES.items():
        print(f"\n{name}:\n{table()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
