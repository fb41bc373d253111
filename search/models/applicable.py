"""Which of a trial's hyperparameters its model uses, for the tables and the tracking that show them.

A space with its own `build_model` still gets a full `TrialConfig` (the training reads its
image size, batch, optimizer, learning rate, schedule, augmentation and label smoothing),
but the backbone-and-head fields of that config say nothing about its model: showing
`backbone=MobileNetV2, weights=imagenet` for a small CNN misleads. Its own hyperparameters
(`filters`, `blocks`, ...) are in the trial's values, and belong beside the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search.core.hooks import OWN_MODEL

# The TrialConfig fields only the built-in backbone-and-head model reads.
BACKBONE_ONLY = frozenset({"backbone", "weights", "fine_tune", "fine_tune_layers", "pooling", "head_batchnorm",
                           "head_layers", "head_width", "dropout"})


def applicable(config: Mapping[str, Any], model: str, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config's fields the model uses, then the trial's own values that the config does not hold
    (a model of the space's own: its hyperparameters; its values win over the config's)."""
    values = dict(values or {})
    own = model == OWN_MODEL
    shown = {k: v for k, v in config.items() if not (own and k in BACKBONE_ONLY)}
    shown.update({k: v for k, v in values.items() if (own or k not in shown) and not k.startswith("tuner/")})
    return shown
