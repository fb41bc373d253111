"""search.export's choice of models, on trial records written as a search writes them (the
conversions themselves run on a real trial in tests/test_levels.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from search import export
from search.errors import SearchError


def trial(space: Path, trial_id: str, backbone: str, score: float, *, status: str = "COMPLETED",
          model: bool = True) -> None:
    folder = space / "trials" / trial_id
    folder.mkdir(parents=True)
    record = {"trial_id": trial_id, "status": status, "config": {"backbone": backbone},
              "best": {"val_accuracy": score}}
    (folder / "result.json").write_text(json.dumps(record))
    if model:
        (folder / "model.keras").write_bytes(b"")


def choose(space: Path, *options: str) -> list[tuple[str, str]]:
    args = export.build_parser().parse_args(["space", *options])
    return [(name, backbone) for path, name, backbone in export.chosen_models(space, args)]


def test_by_default_the_best_trial_of_each_backbone_with_a_model(tmp_path):
    space = tmp_path / "runs" / "space"
    trial(space, "0", "MobileNet", 0.5)
    trial(space, "1", "MobileNet", 0.9)
    trial(space, "2", "MobileNet", 0.7)
    trial(space, "3", "ResNet50", 0.3)
    trial(space, "4", "ResNet50", 0.95, status="FAILED")  # scored before it failed: not exported
    trial(space, "5", "ResNet50", 0.99, model=False)  # keep_models="best" deleted its model
    trial(space, "6", "DenseNet121", 0.8, status="PRUNED")
    assert sorted(choose(space)) == [("trial-1", "MobileNet"), ("trial-3", "ResNet50")]
    assert sorted(choose(space, "--all")) == [("trial-0", "MobileNet"), ("trial-1", "MobileNet"),
                                              ("trial-2", "MobileNet"), ("trial-3", "ResNet50")]
    assert choose(space, "--trial", "2") == [("trial-2", "MobileNet")]
    with pytest.raises(SearchError, match=r"--trial 5: no completed trial with a model .* Trials with one: 0, 1, 2, 3\."):
        choose(space, "--trial", "5")


def test_integer_inputs_take_their_scale_and_zero_point():
    images = np.array([[0.0, 1.4, 127.6, 255.0, 300.0]], np.float32)
    assert export._quantized(images, {"dtype": np.uint8, "quantization": (1.0, 0)}).tolist() == [[0, 1, 128, 255, 255]]
    assert export._quantized(images, {"dtype": np.int8, "quantization": (1.0, -128)}).tolist() == [[-128, -127, 0, 127, 127]]
    assert export._quantized(images, {"dtype": np.float32, "quantization": (0.0, 0)}).dtype == np.float32
