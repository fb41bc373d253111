"""The Python API, for notebooks: the same search, report and promotion as the commands.

    import search
    result = search.run_space("spaces/digits.py", data="builtin:digits", max_trials=4)
    result.leaderboard          # a DataFrame, best first
    result.champion             # runs/<space>/champion.keras
    model = result.load_champion()

`run_space` runs (or resumes) a search exactly as `python -m search.run` does, through the
same functions, then promotes its champion as the command does when the search completes.
A user's mistake raises `search.SearchError` (or one of its kinds) with the message the
command prints; nothing calls `sys.exit`. Progress comes as plain lines, flushed as they
are written, which a notebook shows as they come.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from search.errors import SearchError


@dataclasses.dataclass
class Result:
    """A search's results as a notebook uses them."""

    space: str  # the space's name
    folder: Path  # runs/<space>/
    status: str  # COMPLETED, STOPPED (time budget), FAILED, KILLED
    message: str
    leaderboard: pd.DataFrame  # every trial: completed ones best first (rank, vs_best), then the rest
    objective: str
    champion: Path | None  # champion.keras, when one was promoted
    ensemble: dict[str, Any] | None  # ensemble.json: what was promoted, why, in-sample and held-out figures
    study_name: str | None  # the Optuna study, when an Optuna algorithm ran the search
    storage: str | None

    @property
    def best_models(self) -> list[Path]:
        """The completed trials' saved models, best first."""
        if "trial_id" not in self.leaderboard:
            return []
        done = self.leaderboard[self.leaderboard["status"] == "COMPLETED"]
        models = [self.folder / "trials" / str(t) / "model.keras" for t in done["trial_id"]]
        return [m for m in models if m.is_file()]

    @property
    def study(self) -> Any:
        """The search's trials as an `optuna.Study`: the study itself when an Optuna algorithm ran
        them, else an in-memory one built from the trial records (for Optuna's plots and importance)."""
        import optuna

        if self.study_name is not None:
            from search.engine.optuna_storage import open_storage

            return optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage, self.folder))
        from search.results import importance
        from search.results.records import load_records

        return importance.study_of(load_records(self.folder), self.objective)

    def load_champion(self) -> Any:
        """The champion as a Keras model (checked against the sha256 ensemble.json keeps)."""
        if self.champion is None:
            raise SearchError(f"no champion in {self.folder}: the search has no finished trial, or ran with "
                              "ensemble=False; promote one with search.promote(...).")
        from search.ensembles.champion import checked
        from search.runs.layout import SpaceDir

        checked(SpaceDir(self.folder), self.champion)
        import keras

        return keras.models.load_model(self.champion, compile=False)


def run_space(space: str | Path, *, data: str | Path | None = None, max_trials: int | None = None,
              epochs: int | None = None, algorithm: str | None = None, seed: int | None = None,
              sets: Mapping[str, Any] | None = None, runs_dir: str | Path = "runs", fresh: bool = False,
              smoke: bool = False, time_budget: str | None = None, tracking: bool = True, ensemble: bool = True,
              storage: str | None = None, study: str | None = None, verbose: int = 1) -> Result:
    """Run or resume the search a space file describes, promote its champion, and return its results.

    The arguments are `python -m search.run`'s options: `data` (a folder, a .zip, TFRecords or
    "builtin:digits"), `sets` ({"backbone": "MobileNet"}, as --set), `tracking=False` as
    --no-tracking, `ensemble=False` as --no-ensemble. `verbose`: 1 a line per trial (as --quiet),
    2 a line per epoch too. A mistake raises SearchError with the command's message.
    """
    from search import run as command
    from search.engine.runner import RECYCLE
    from search.space import load_space

    values = {name: str(value) for name, value in (sets or {}).items()}
    loaded = load_space(str(space), sets=values, data_path=None if data is None else str(data), max_trials=max_trials,
                        epochs=epochs, algorithm=algorithm, seed=seed, smoke=smoke)
    loaded = command.configured(loaded, storage=storage, study=study, time_budget=time_budget)
    runs = Path(runs_dir)
    outcome = command.search_and_promote(loaded, runs, fresh=fresh, verbose=2 if verbose >= 2 else 0,
                                         tracking=tracking, ensemble=ensemble, recycle=False)
    if outcome.status == RECYCLE:  # not asked for (recycle=False); never expected here
        raise SearchError("the search stopped to continue in a fresh process; call run_space again to resume it.")
    return open_results(loaded.name, runs_dir=runs, status=outcome.status, message=outcome.message,
                   study_name=outcome.study, storage=storage)


def open_results(space: str, *, runs_dir: str | Path = "runs", status: str = "", message: str = "",
            study_name: str | None = None, storage: str | None = None) -> Result:
    """The results of a search already run (its name or space file), as `run_space` returns them."""
    from search.report import ranked
    from search.tracking import study as studies
    from search.results.records import trials_table
    from search.results.saved import locate

    saved = locate(str(space), Path(runs_dir))
    gathered = studies.gather(saved)
    table = ranked(trials_table(gathered.records), saved.objective) if gathered.records else pd.DataFrame()
    folder = saved.folder
    ensemble = None
    if folder.ensemble_record.is_file():
        try:
            ensemble = json.loads(folder.ensemble_record.read_text())
        except ValueError:
            ensemble = None
    if study_name is None and saved.record.get("study"):
        study_name = str(saved.record["study"])
    return Result(space=saved.name, folder=folder.path, status=status or str(saved.record.get("status", "")),
                  message=message, leaderboard=table, objective=saved.objective,
                  champion=folder.champion if folder.champion.is_file() else None, ensemble=ensemble,
                  study_name=study_name, storage=storage)


def promote(space: str, *, runs_dir: str | Path = "runs", method: str = "auto", force: bool = False,
            tracking: bool = True) -> dict[str, Any]:
    """Promote a search's champion again (as `python -m search.ensemble`); returns ensemble.json's content."""
    from search.ensembles.promote import promote as promoting
    from search.results.saved import locate

    return promoting(locate(str(space), Path(runs_dir)), method=method.replace("-", "_"), force=force, track=tracking)
