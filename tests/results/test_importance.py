"""Which hyperparameters mattered: fANOVA over the finished trials, whatever algorithm ran them."""

from __future__ import annotations

import numpy as np

from search.results import importance


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
    table, used = importance.compute(records, "val_accuracy")
    assert used == 30
    assert list(table["hyperparameter"])[0] == "learning_rate" and table["importance"].iloc[0] > 0.8
    assert "image_size" not in set(table["hyperparameter"])  # never varied: nothing to say
    assert abs(table["importance"].sum() - 1) < 0.01


def test_too_few_trials_say_nothing():
    assert importance.compute([{"trial_id": "0", "status": "COMPLETED", "best": {"val_accuracy": 0.5},
                                "values": {"units": 8}}], "val_accuracy") is None
