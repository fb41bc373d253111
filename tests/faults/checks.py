"""What "exactly once" means, checked on a search's folder, its study and its MLflow store."""

from __future__ import annotations

import json
import pandas as pd

from search.results.records import load_records
from search.runs.layout import SpaceDir


def finished_records(folder: SpaceDir) -> dict[str, dict]:
    return {r["trial_id"]: r for r in load_records(folder) if r["status"] in ("COMPLETED", "PRUNED")}


def check_keras_tuner(folder: SpaceDir, max_trials: int) -> None:
    """Keras Tuner's own state agrees with the records: every trial it created is finished and
    recorded once, and it created no more than max_trials."""
    finished = finished_records(folder)
    assert len(finished) == max_trials, sorted(finished)
    oracle = json.loads((folder.tuner / "oracle.json").read_text())
    trials = {p.parent.name.removeprefix("trial_"): json.loads(p.read_text())
              for p in folder.tuner.glob("trial_*/trial.json")}
    assert len(trials) == max_trials, sorted(trials)  # none created twice
    assert {t for t, state in trials.items() if state["status"] == "COMPLETED"} == set(finished)
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == []
    assert not [r for r in load_records(folder) if r["trial_id"] not in trials]  # no orphan record
    _check_table(folder, finished)


def check_optuna(folder: SpaceDir, max_trials: int, study_name: str = "tiny", storage=None) -> None:
    """The study agrees with the records: max_trials finished, each once, nothing running or waiting,
    and every failed study trial replaced by a retry (a dead worker's) or left out as surplus."""
    import optuna
    from optuna.trial import TrialState

    from search.engine.optuna_storage import open_storage
    from search.engine.reaper import counted

    study = optuna.load_study(study_name=study_name, storage=storage or open_storage(None, folder.path))
    trials = study.get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == max_trials, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(counted(trials)) == max_trials  # every other trial is a replaced or surplus one
    finished = finished_records(folder)
    told = {f"{t.number:04d}" for t in done if "recovers" not in t.system_attrs}
    told |= {f"{t.system_attrs['recovers']:04d}" for t in done if "recovers" in t.system_attrs}
    assert told == set(finished), (sorted(told), sorted(finished))
    for t in done:
        if t.state == TrialState.COMPLETE and len(t.values) == 1:
            record = finished[f"{t.system_attrs.get('recovers', t.number):04d}"]
            assert t.value == record["best"]["val_accuracy"]
    _check_table(folder, finished)


def _check_table(folder: SpaceDir, finished: dict[str, dict]) -> None:
    table = pd.read_csv(folder.trials_csv, dtype={"trial_id": str})
    assert table["trial_id"].is_unique
    assert set(table[table["status"].isin(["COMPLETED", "PRUNED"])]["trial_id"]) == set(finished)


def check_champion(folder: SpaceDir) -> None:
    import keras

    model = keras.models.load_model(folder.champion, compile=False)
    summary = json.loads(folder.ensemble_record.read_text())
    assert model.output_shape[-1] == 10 and summary["promoted"]["members"]


def check_mlflow(uri: str, finished: set[str]) -> None:
    """No run left RUNNING; every finished trial logged once as a FINISHED trial run."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=5000)
    running = [(r.info.run_name, r.data.tags.get("worker")) for r in runs if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"
    logged = [r.data.tags["trial_id"] for r in runs if r.data.tags.get("trial_id") and r.info.status == "FINISHED"]
    every = [(r.info.run_name, r.info.status, r.data.tags.get("trial_id")) for r in runs]
    assert sorted(logged) == sorted(finished), (sorted(logged), sorted(finished), every)

