"""Which hyperparameters mattered: fANOVA over the finished trials, whatever algorithm ran them."""

from __future__ import annotations

import numpy as np

from search.results import importance
from search.runs.layout import SpaceDir


def test_the_hyperparameter_that_drives_the_objective_comes_first():
    rng = np.random.default_rng(0)
    records = []
    for i in range(30):
        rate, width, optimizer = rng.uniform(1e-4, 1e-2), int(rng.integers(64, 512)), str(rng.choice(["adam", "sgd"]))
        score = 0.5 + 40 * rate + rng.normal(0, 0.01)  # only the learning rate matters
        records.append({"trial_id": str(i), "status": "COMPLETED", "best": {"val_accuracy": score},
                        "values": {"learning_rate": rate, "head_width": width, "optimizer": optimizer,
                                   "image_size": 32}})
    records.append({"trial_id": "failed", "status": "FAILED", "best": {}, "values": {"learning_rate": 1.0}})
    table, used = importance.compute(records, "val_accuracy", resamples=10)
    assert used == 30
    assert list(table["hyperparameter"])[0] == "learning_rate" and table["importance"].iloc[0] > 0.8
    assert "image_size" not in set(table["hyperparameter"])  # never varied: nothing to say
    assert abs(table["importance"].sum() - 1) < 0.01
    # Each share with its spread over bootstrap resamples of the trials.
    first = table.iloc[0]
    assert 0 < first["spread"] < 0.3 and 0.5 < first["low"] <= first["high"] <= 1


def test_too_few_trials_say_why_nothing_is_shown(tmp_path):
    records = [{"trial_id": str(i), "status": "COMPLETED", "best": {"val_accuracy": 0.5 + i / 10},
                "values": {"units": 8 * (i + 1)}} for i in range(importance.MIN_TRIALS - 1)]
    assert importance.compute(records, "val_accuracy") is None
    assert importance.write(records, SpaceDir(tmp_path), "val_accuracy") is None
    assert importance.why_not(records, "val_accuracy") == (
        f"{importance.MIN_TRIALS - 1} completed trial(s) with a val_accuracy; importance needs at least "
        f"{importance.MIN_TRIALS}, fewer say nothing worth a number")
    assert not list(tmp_path.iterdir())


def test_optuna_plots_of_the_trials_are_written_as_pictures(tmp_path):
    rng = np.random.default_rng(1)
    records = [{"trial_id": str(i), "status": "COMPLETED", "best": {"val_loss": float(rng.uniform(0.1, 2))},
                "values": {"units": int(rng.integers(1, 9)) * 8, "optimizer": str(rng.choice(["adam", "sgd"]))}}
               for i in range(importance.MIN_TRIALS + 1)]
    found = importance.write(records, SpaceDir(tmp_path), "val_loss")
    assert found is not None and found.trials == importance.MIN_TRIALS + 1
    names = {p.name for p in found.files}
    assert {"importance.csv", "importance.png", "optuna_history.png", "optuna_parallel_coordinate.png",
            "optuna_slice.png", "optuna_param_importances.png"} == names
    for path in found.files:
        assert path.is_file() and (path.suffix != ".png" or path.read_bytes()[:4] == b"\x89PNG")
