"""The runs folder: every path the tool reads or writes (`search.results.saved` finds a searched
space's folder again from a space file or a name).

    runs/                      RunsDir (--runs-dir)
      mlflow.db, mlartifacts/  the default MLflow store
      data/  .data/            builtin datasets written once; extracted zips, image checks
      <space>/                 SpaceDir: one search (the space file's `name`, else its stem)
        search.json            what was searched: space hash, seed, settings, data fingerprint
        trials/<id>/           TrialDir: model.keras, result.json, val_probabilities.npy, error.txt, plots/
        trials.csv best.keras best.json val_labels.npy skipped.csv
        tuner/                 Keras Tuner's state (Optuna workers: tuner/<host>-<pid>/)
        optuna.journal         the default Optuna study
        champion.keras ensemble.json ensemble/   the promoted model (search.ensemble)
        leaderboard.csv size_vs_accuracy.png importance.* pareto.*   reports
        export/ featuremaps/ tensorboard/
        features/              pooled features of frozen backbones (search.models.features)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from search.errors import SearchError


@dataclasses.dataclass(frozen=True)
class TrialDir:
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def record(self) -> Path:
        return self.path / "result.json"

    @property
    def model(self) -> Path:
        return self.path / "model.keras"

    @property
    def val_probabilities(self) -> Path:
        return self.path / "val_probabilities.npy"

    @property
    def error(self) -> Path:
        return self.path / "error.txt"

    @property
    def plots(self) -> Path:
        return self.path / "plots"


@dataclasses.dataclass(frozen=True)
class SpaceDir:
    """runs/<space>/: one search's folder."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # What the search writes and reads back -------------------------------------------
    @property
    def record(self) -> Path:
        return self.path / "search.json"

    @property
    def trials(self) -> Path:
        return self.path / "trials"

    def trial(self, trial_id: str) -> TrialDir:
        return TrialDir(self.trials / trial_id)

    def trial_dirs(self) -> list[TrialDir]:
        return [TrialDir(p) for p in sorted(self.trials.iterdir()) if p.is_dir()] if self.trials.is_dir() else []

    @property
    def trials_csv(self) -> Path:
        return self.path / "trials.csv"

    @property
    def best_model(self) -> Path:
        return self.path / "best.keras"

    @property
    def best_record(self) -> Path:
        return self.path / "best.json"

    @property
    def val_labels(self) -> Path:
        return self.path / "val_labels.npy"

    @property
    def skipped(self) -> Path:
        return self.path / "skipped.csv"

    @property
    def tuner(self) -> Path:
        return self.path / "tuner"

    @property
    def journal(self) -> Path:
        return self.path / "optuna.journal"

    @property
    def journal_claims(self) -> Path:
        return self.path / "optuna.journal.claims"

    @property
    def mlflow_record(self) -> Path:
        return self.path / "mlflow.json"

    # What the other commands write ----------------------------------------------------
    @property
    def champion(self) -> Path:
        return self.path / "champion.keras"

    @property
    def ensemble_record(self) -> Path:
        return self.path / "ensemble.json"

    @property
    def ensemble(self) -> Path:
        return self.path / "ensemble"

    @property
    def leaderboard(self) -> Path:
        return self.path / "leaderboard.csv"

    @property
    def size_plot(self) -> Path:
        return self.path / "size_vs_accuracy.png"

    @property
    def pareto_csv(self) -> Path:
        return self.path / "pareto.csv"

    @property
    def pareto_plot(self) -> Path:
        return self.path / "pareto.png"

    @property
    def importance_csv(self) -> Path:
        return self.path / "importance.csv"

    @property
    def importance_plot(self) -> Path:
        return self.path / "importance.png"

    @property
    def export(self) -> Path:
        return self.path / "export"

    @property
    def features(self) -> Path:
        return self.path / "features"

    @property
    def featuremaps(self) -> Path:
        return self.path / "featuremaps"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def study_cache(self) -> Path:
        """Trials of a shared study run by other machines, fetched from the tracking store."""
        return self.path / "study"

    # Locks ------------------------------------------------------------------------------
    @property
    def search_lock(self) -> Path:
        return self.path / ".search.lock"

    @property
    def promotion_lock(self) -> Path:
        return self.path / ".promotion.lock"

    @property
    def table_lock(self) -> Path:
        return self.path / ".trials.lock"

    def written_by_a_search(self) -> list[Path]:
        """Everything `--fresh` removes: the search's state and all that was derived from it.
        Files of the user's own in the folder, and the lock files, stay."""
        names = [
            self.record, self.trials, self.trials_csv, self.best_model, self.best_record, self.val_labels,
            self.skipped, self.tuner, self.journal, self.journal_claims, self.mlflow_record, self.champion, self.ensemble_record,
            self.ensemble, self.leaderboard, self.size_plot, self.pareto_csv, self.pareto_plot,
            self.importance_csv, self.importance_plot, self.export, self.featuremaps, self.tensorboard,
            self.study_cache, self.features,
        ]
        return [p for p in names if p.exists() or p.is_symlink()]

    def remove_search(self) -> None:
        for path in self.written_by_a_search():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class RunsDir:
    path: Path

    def space(self, name: str) -> SpaceDir:
        return SpaceDir(self.path / name)

    @property
    def mlflow_db(self) -> Path:
        return self.path / "mlflow.db"

    @property
    def builtin_data(self) -> Path:
        return self.path / "data"

    @property
    def extracted(self) -> Path:
        """Zips extracted once, image checks and converted images: runs/.data/."""
        return self.path / ".data"

    @property
    def bench(self) -> Path:
        return self.path / "bench"

    def searched(self) -> list[str]:
        """The names of the spaces searched here."""
        return sorted(p.parent.name for p in self.path.glob("*/search.json")) if self.path.is_dir() else []


def served_model(folder: SpaceDir) -> tuple[Path, str]:
    """The model the commands predict with: the champion, else the best single trial (with a
    note saying so); SearchError when neither exists."""
    if folder.champion.is_file():
        return folder.champion, ""
    if folder.best_model.is_file():
        return folder.best_model, (
            f"note: no {folder.champion.name} in {folder.path} (promote one with `python -m search.ensemble "
            f"{folder.name}`); using {folder.best_model.name}, the best single trial.")
    raise SearchError(f"{folder.path} has neither {folder.champion.name} nor {folder.best_model.name}: no trial has "
                      "finished yet.")


def read_record(folder: SpaceDir) -> dict[str, Any]:
    """search.json, or SearchError naming it when it is damaged."""
    try:
        record = json.loads(folder.record.read_text())
    except (OSError, ValueError) as e:
        raise SearchError(
            f"{folder.record} is damaged ({type(e).__name__}); the trials in {folder.trials} are safe: "
            "re-run `python -m search.run` with the same space and settings to rewrite it."
        ) from None
    if not isinstance(record, dict):
        raise SearchError(f"{folder.record} is not a search record; re-run `python -m search.run` to rewrite it.")
    return record
