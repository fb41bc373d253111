"""Synthetic searches and trials for testing hooks without training (tracking, report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search.core.hooks import SearchHooks, SearchInfo, TrialInfo, TrialResult
from search.core.status import COMPLETED
from search.hparams import TrialConfig
from search.results import records

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fox"]


def search_info(runs_dir: Path, name: str = "fake") -> SearchInfo:
    space_dir = runs_dir / name
    space_dir.mkdir(parents=True, exist_ok=True)
    np.save(space_dir / "val_labels.npy", np.array([0, 1, 2, 0, 1, 2]))
    return SearchInfo(
        name=name, space_path=REPO / "spaces" / "digits.py", space_dir=space_dir,
        settings={"algorithm": "random", "objective": "val_accuracy", "max_trials": 4, "epochs": 2},
        data={"layout": "folders", "root": "/data", "classes": CLASSES, "num_classes": 3,
              "counts": {"train": 24, "val": 6}, "skipped": 0, "content_hash": "abc"},
        strategy="default, float32", replicas=1, seed=0,
    )


def trial(search: SearchInfo, number: int, **config: object) -> TrialInfo:
    values = {"backbone": "MobileNet", "learning_rate": 1e-3 * number, **config}
    return TrialInfo(
        trial_id=f"{number - 1:02d}", number=number, total=4, values=values,
        config=TrialConfig.from_values(values), dir=search.space_dir / "trials" / f"{number - 1:02d}", epochs=2,
    )


def result(info: TrialInfo, status: str = COMPLETED, accuracy: float = 0.5, params: int = 1000,
           epochs: int = 2) -> TrialResult:
    info.dir.mkdir(parents=True, exist_ok=True)
    probabilities = np.eye(3, dtype=np.float32)[[0, 1, 2, 1, 1, 2]]
    np.save(info.dir / "val_probabilities.npy", probabilities)
    history = {"loss": [1.0, 0.8][:epochs], "accuracy": [0.3, accuracy][:epochs],
               "val_loss": [1.1, 0.9][:epochs], "val_accuracy": [0.3, accuracy][:epochs],
               "learning_rate": [1e-3, 1e-3][:epochs]}
    done = status == COMPLETED
    return TrialResult(
        status=status, history=history, epochs_run=epochs, seconds=2.0 * epochs,
        best={k: v[-1] for k, v in history.items()} if done else {},
        params=params if done else None, size_mb=params * 4 / 1e6 if done else None,
        val_probabilities_path=info.dir / "val_probabilities.npy" if done else None, train_images=24,
        error=None if done else f"{status.lower()} on purpose",
    )


class RecordWriter(SearchHooks):
    """Writes each trial's record and trials.csv as the tuner does, for searches without training."""

    def on_trial_end(self, search: SearchInfo, trial: TrialInfo, result: TrialResult) -> None:
        records.write_record(trial, result)
        records.write_trials_csv(search.space_dir)
