"""A password holding every character a URL treats specially never shows: not on the console,
not in a file of the runs folder, not in an MLflow param or tag, not in a failed trial's
error (trials.csv, error.txt). Against a real PostgreSQL role that must give that password."""

from __future__ import annotations

import urllib.parse

import pytest
from conftest import TINY
from mlflow import MlflowClient

from servers.roles import password_role

PASSWORD = "Zq'9\"x#y@w%v:u/t"
# What any form of the password (as typed, percent-encoded, escaped by repr or JSON) would show.
FRAGMENTS = ("Zq", "x#y", "y@w", "%v", "v:u", "u/t", "u%2Ft", "%23y", "%40w")
# The first trial fails, quoting the storage URL, as a space that reports its own connection error would.
FAILS_ONCE = """

def callbacks(hp):
    import os, pathlib, keras

    marker = pathlib.Path(os.environ["FAILED_ONCE"])

    def fail(epoch, logs):
        if not marker.exists():
            marker.touch()
            raise RuntimeError("cannot reach " + os.environ["STORAGE_URL"])

    return [keras.callbacks.LambdaCallback(on_epoch_end=fail)]
"""


def leaks(text: str) -> list[str]:
    return [f for f in FRAGMENTS if f in text]


@pytest.mark.parametrize("typed", [pytest.param("encoded", marks=pytest.mark.slow), "as typed"])  # CI: the harder one
def test_an_odd_password_shows_nowhere(zygote, postgres, digits_folders, tmp_path, typed):
    role = "secret_" + typed.replace(" ", "_")
    url = password_role(postgres, role, PASSWORD)
    if typed == "as typed":  # SQLAlchemy reads ' " # : / as they are; @ and % must be encoded
        url = url.replace(urllib.parse.quote(PASSWORD, safe=""), PASSWORD.replace("%", "%25").replace("@", "%40"))
    space = tmp_path / "odd.py"
    space.write_text(TINY.read_text() + FAILS_ONCE)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    env = {"MLFLOW_TRACKING_URI": store, "FAILED_ONCE": str(tmp_path / "failed"), "STORAGE_URL": url}
    runs = tmp_path / "runs"
    done = zygote.run("run", space, "--data", digits_folders, "--algorithm", "tpe", "--storage", url,
                      "--max-trials", "2", "--epochs", "1", "--runs-dir", runs, "--quiet", env=env)
    assert done.code == 0, done.output[-3000:]
    assert not leaks(done.output), done.output[-3000:]
    assert "cannot reach postgresql://" in done.output and f"{role}:***@127.0.0.1" in done.output

    written = {p: p.read_text(errors="replace") for p in runs.rglob("*")
               if p.is_file() and p.suffix in (".json", ".csv", ".txt", ".yaml", "")}
    assert not {str(p): leaks(t) for p, t in written.items() if leaks(t)}
    table = (runs / "odd" / "trials.csv").read_text()
    assert f"cannot reach postgresql://{role}:***@127.0.0.1" in table
    errors = [t for p, t in written.items() if p.name == "error.txt"]
    assert len(errors) == 1 and "Traceback" in errors[0] and f"{role}:***@" in errors[0]
    assert f"{role}:***@" in (runs / "odd" / "search.json").read_text()

    client = MlflowClient(store)
    runs_logged = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs_logged) >= 3  # the search's run and its trials'
    shown = [f"{k}={v}" for r in runs_logged for k, v in (*r.data.params.items(), *r.data.tags.items())]
    assert any(f"{role}:***@" in s for s in shown)
    assert not [s for s in shown if leaks(s)]

    wrong = url.replace(f"{role}:", f"{role}:x")  # the wrong password: one line, and no password in it
    refused = zygote.run("run", space, "--data", digits_folders, "--algorithm", "tpe", "--storage", wrong,
                         "--runs-dir", tmp_path / "other", "--quiet", "--no-tracking", env=env)
    assert refused.code == 2 and not leaks(refused.output), refused.output[-3000:]
