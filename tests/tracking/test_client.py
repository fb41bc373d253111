"""Calls to the tracking store that fail for a moment are repeated, on a real SQLite store."""

from __future__ import annotations

import threading

from mlflow import MlflowClient

from search.tracking.client import Retrying

WRITERS = 4
TAGS = 15


def _set_at_once(clients: list, run_id: str) -> list[str]:
    """Every client sets each new tag on one run at the same instant; the errors they got."""
    errors: list[str] = []
    for key in range(TAGS):
        start = threading.Barrier(len(clients))

        def write(client, key=key, start=start):  # noqa: ANN001
            start.wait()
            try:
                client.set_tag(run_id, f"tag{key}", "value")
            except Exception as e:  # noqa: BLE001 - counted
                errors.append(str(e).splitlines()[0])

        threads = [threading.Thread(target=write, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return errors


def test_workers_setting_one_new_tag_at_once_all_succeed(tmp_path):
    """The workers of a study share their search's run and tag it as they start (mlflow#8442)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MlflowClient(uri)
    run_id = first.create_run(first.create_experiment("tags")).info.run_id
    # What MLflow alone does: some inserts of the same new tag fail (UNIQUE constraint).
    plain = _set_at_once([MlflowClient(uri) for _ in range(WRITERS)], run_id)
    assert plain and "UNIQUE constraint failed: tags" in plain[0]
    other = first.create_run(first.get_experiment_by_name("tags").experiment_id).info.run_id
    assert _set_at_once([Retrying(MlflowClient(uri)) for _ in range(WRITERS)], other) == []
    assert {f"tag{k}" for k in range(TAGS)} <= set(first.get_run(other).data.tags)
