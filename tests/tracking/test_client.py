"""Calls to the tracking store that fail for a moment are repeated, on a real SQLite store."""

from __future__ import annotations

import threading

import sqlalchemy
from mlflow import MlflowClient

from search.tracking.client import Retrying

WRITERS = 4
TAGS = 5


def _set_at_once(clients: list, run_id: str, engine: sqlalchemy.engine.Engine) -> list[str]:
    """Every client sets each new tag on one run, all inserting it at once; the errors they got.

    MLflow sets a tag by looking for it and then inserting it. Each writer is held just before
    its INSERT until every writer has looked, so each round meets the race (mlflow#8442)
    however the threads happen to be scheduled.
    """
    errors: list[str] = []
    gate = threading.Barrier(len(clients))  # used again each round: it resets once all have passed

    def hold_tag_inserts(conn, cursor, statement, *args):  # noqa: ANN001
        if statement.lstrip().upper().startswith("INSERT INTO TAGS"):
            gate.wait(timeout=30)  # broken, it raises in set_tag and the test shows that error

    def write(client, key: int) -> None:  # noqa: ANN001
        try:
            client.set_tag(run_id, f"tag{key}", f"value{key}")
        except Exception as e:  # noqa: BLE001 - counted
            errors.append(str(e).splitlines()[0] or type(e).__name__)

    sqlalchemy.event.listen(engine, "before_cursor_execute", hold_tag_inserts)
    try:
        for key in range(TAGS):
            threads = [threading.Thread(target=write, args=(c, key)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", hold_tag_inserts)
    return errors


def test_workers_setting_one_new_tag_at_once_all_succeed(tmp_path):
    """The workers of a study share their search's run and tag it as they start (mlflow#8442)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MlflowClient(uri)
    engine = first._tracking_client.store.engine  # MLflow shares one engine per store URI
    experiment = first.create_experiment("tags")
    # What MLflow alone does: all but one insert of the same new tag fail (UNIQUE constraint).
    # When MLflow fixes the race this fails, and the retry of that error can go.
    plain_run = first.create_run(experiment).info.run_id
    plain = _set_at_once([MlflowClient(uri) for _ in range(WRITERS)], plain_run, engine)
    assert len(plain) == TAGS * (WRITERS - 1), plain
    assert all("UNIQUE constraint failed: tags" in e for e in plain), plain
    # Through the retrying client, every writer's call succeeds and every tag is there.
    run = first.create_run(experiment).info.run_id
    assert _set_at_once([Retrying(MlflowClient(uri)) for _ in range(WRITERS)], run, engine) == []
    assert {f"tag{k}": f"value{k}" for k in range(TAGS)}.items() <= first.get_run(run).data.tags.items()
