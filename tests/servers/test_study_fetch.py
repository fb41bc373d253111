"""Fetching other machines' trials from an MLflow server: a trial is used only once all its
files have arrived, however early its run says FINISHED."""

from __future__ import annotations

import json

import numpy as np

from search.tracking import study
from search.results.saved import locate


def test_a_trial_still_sending_its_files_is_left_out_until_they_all_came(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    folder = tmp_path / "runs" / "fetching"
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({"study": "fetching", "settings": {"algorithm": "tpe"}}))
    labels = np.arange(10) % 3
    np.save(folder / "val_labels.npy", labels)
    # What another machine's tracker sends for its trial 0007, in its order.
    sent = tmp_path / "elsewhere"
    sent.mkdir()
    (sent / "result.json").write_text(json.dumps({"trial_id": "0007", "status": "COMPLETED",
                                                  "best": {"val_accuracy": 0.5}}))
    np.save(sent / "val_probabilities.npy", np.full((10, 3), 1 / 3, np.float32))
    (sent / "model.keras").write_bytes(b"a model")
    np.save(sent / "val_labels.npy", labels)
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment("transfer-search/fetching")
    run = client.create_run(experiment, tags={"trial_id": "0007", "study": "fetching", "status": "COMPLETED"})
    client.set_terminated(run.info.run_id, "FINISHED")  # FINISHED first: the files follow in the background
    for name in ("result.json", "val_probabilities.npy", "model.keras"):
        client.log_artifact(run.info.run_id, str(sent / name), "trial")

    early = study.gather(locate("fetching", tmp_path / "runs"))
    assert "0007" not in early.trials
    assert any("has not sent all its files yet (val_labels.npy missing)" in note for note in early.notes), early.notes
    assert not (folder / "study" / "0007").exists()

    client.log_artifact(run.info.run_id, str(sent / "val_labels.npy"), "trial")
    later = study.gather(locate("fetching", tmp_path / "runs"))
    assert "0007" in later.trials and later.trials["0007"].source == study.FETCHED, later.notes
    assert (folder / "study" / "0007" / "model.keras").read_bytes() == b"a model"


def test_the_promoter_waits_for_the_last_trials_of_other_machines(mlflow_server, tmp_path, monkeypatch, capsys):
    import threading
    import time

    import mlflow
    import optuna

    from search.ensembles.promote import await_study

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    folder = tmp_path / "runs" / "waiting"
    (folder / "trials" / "0000").mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({"study": "waiting", "settings": {"algorithm": "tpe"}}))
    (folder / "trials" / "0000" / "result.json").write_text(json.dumps(
        {"trial_id": "0000", "status": "COMPLETED", "best": {"val_accuracy": 0.5}}))
    journal = str(folder / "optuna.journal")
    done = optuna.create_study(study_name="waiting", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(journal)))
    done.optimize(lambda trial: 0.5, n_trials=3)  # trials 0000 (here), 0001 (elsewhere), 0002 (lost)
    sent = tmp_path / "elsewhere"
    sent.mkdir()
    (sent / "result.json").write_text(json.dumps({"trial_id": "0001", "status": "COMPLETED", "best": {}}))
    np.save(sent / "val_probabilities.npy", np.zeros((4, 2), np.float32))
    np.save(sent / "val_labels.npy", np.zeros(4, np.int64))
    client = mlflow.MlflowClient(mlflow_server.uri)
    experiment = client.create_experiment("transfer-search/waiting")
    run = client.create_run(experiment, tags={"trial_id": "0001", "study": "waiting", "status": "COMPLETED"})
    client.set_terminated(run.info.run_id, "FINISHED")

    def send_later() -> None:
        time.sleep(3)
        for name in ("result.json", "val_probabilities.npy", "val_labels.npy"):
            client.log_artifact(run.info.run_id, str(sent / name), "trial")

    sender = threading.Thread(target=send_later)
    sender.start()
    started = time.monotonic()
    missing = await_study(locate("waiting", tmp_path / "runs"), journal, "waiting", wait=20)
    waited = time.monotonic() - started
    sender.join()
    assert missing == 1  # trial 0002's machine never sent it: waited for, then promoted without
    assert 3 <= waited and (folder / "study" / "0001" / "result.json").is_file()
    assert "never reached the tracking store" in capsys.readouterr().err
