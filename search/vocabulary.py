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
from search.core.options import PRUNERS
from search.declare import HALVING_SETTINGS
from search.data.augment import POLICIES
from search.core.algorithms import ALGORITHMS
from search.hparams import DEFAULTS, MEANING, WORDS
from search.models.backbones import BACKBONES, PREPROCESSING
from search.models.optimizers import OPTIMIZERS
from search.models.schedules import SCHEDULES

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
        ("pruner", {k: f"{v}; Optuna's: `options={{'pruner': '{k}'}}`" for k, v in PRUNERS.items()}),
    ]
    rows = [(f"`{setting}`", f"`{value}`", meaning) for setting, values in sections for value, meaning in values.items()]
    rows += [(f"`{setting}`", value, meaning) for setting, (value, meaning) in HALVING_SETTINGS.items()]
    return _table(("setting", "value", "meaning"), rows)


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
