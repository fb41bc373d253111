"""Secrets never reach the console, a file or a tag: every URL form a storage or a server takes."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from search.declare import Search
from search.engine.runner import recorded_settings
from search.redaction import redact, redact_all


@pytest.mark.parametrize("text, shown", [
    ("postgresql://optuna:s3cret@db-host:5432/optuna", "postgresql://optuna:***@db-host:5432/optuna"),
    ("postgresql+psycopg2://u:p%40ss@h/db", "postgresql+psycopg2://u:***@h/db"),
    ("postgresql://u@h/db?sslmode=require&password=s3cret", "postgresql://u@h/db?sslmode=require&password=***"),
    ("mysql+pymysql://root:s3cret@localhost/optuna", "mysql+pymysql://root:***@localhost/optuna"),
    ("host=db password=s3cret dbname=optuna", "host=db password=*** dbname=optuna"),
    ("https://user:tok3n@mlflow.example:5000", "https://user:***@mlflow.example:5000"),
    ("http://mlflow:5000/?token=s3cret", "http://mlflow:5000/?token=***"),
    ("could not connect to postgresql://a:s3cret@c/d: timeout", "could not connect to postgresql://a:***@c/d: timeout"),
])
def test_every_form_of_secret_is_redacted(text, shown):
    assert redact(text) == shown
    assert "s3cret" not in redact(text) and "tok3n" not in redact(text)


@pytest.mark.parametrize("text", ["runs/x/optuna.journal", "sqlite:///runs/mlflow.db", "http://127.0.0.1:5000",
                                  "key_file=id.pem", "monkey=1"])
def test_text_without_secrets_is_left_alone(text):
    assert redact(text) == text


def test_the_recorded_settings_keep_no_password_but_the_search_still_connects():
    search = Search(algorithm="tpe", options={"storage": "postgresql://optuna:s3cret@db-host:5432/optuna"})
    assert recorded_settings(search)["options"]["storage"] == "postgresql://optuna:***@db-host:5432/optuna"
    assert search.options["storage"].endswith("s3cret@db-host:5432/optuna")
    assert redact_all({"a": ["x://u:s3cret@h"], "b": 1}) == {"a": ["x://u:***@h"], "b": 1}


def test_no_command_output_shows_a_password(tmp_path, capsys, monkeypatch):
    from conftest import TINY

    from search import run

    storage = "postgresql://optuna:s3cret@127.0.0.1:1/optuna"  # nothing listens on port 1
    base = [str(TINY), "--algorithm", "tpe", "--storage", storage, "--runs-dir", str(tmp_path), "--no-tracking"]
    assert run.main([*base, "--dry-run"]) == 0
    assert run.main(base) == 2  # the storage cannot be opened: one line, and no password in it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow-user:s3cret@127.0.0.1:9")
    assert run.main([str(TINY), "--dry-run", "--runs-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "s3cret" not in out + err and "optuna:***@127.0.0.1" in out + err
    assert not [p for p in tmp_path.rglob("*.json") if "s3cret" in p.read_text()]


ODD = "Zq'9\"x#y@w%v:u/t"


@pytest.mark.parametrize("url", [
    f"postgresql://optuna:{urllib.parse.quote(ODD, safe='')}@db:5432/optuna",  # every character encoded
    "postgresql://optuna:Zq'9\"x#y%40w%25v:u/t@db:5432/optuna",  # as SQLAlchemy reads them unencoded
    f"mysql+pymysql://root:{urllib.parse.quote(ODD, safe='')}@localhost/optuna",
    f"https://me:{urllib.parse.quote(ODD, safe='')}@mlflow.example:5000/",
    f"http://mlflow:5000/?token={urllib.parse.quote(ODD, safe='')}",
    f"postgresql://u@h/db?sslmode=require&password={urllib.parse.quote_plus(ODD)}",
])
@pytest.mark.parametrize("quoted", [str, repr, json.dumps, lambda u: str({"storage": u}),
                                    lambda u: f"could not connect to {u}: timeout", lambda u: f"({u}).",
                                    lambda u: f"{u}\n  during handling of {u!r}"])
def test_a_password_of_any_character_is_hidden_in_any_quoting(url, quoted):
    shown = redact(quoted(url))
    assert "***" in shown
    assert not [f for f in ("Zq", "x#y", "y@w", "%v", "v:u", "u/t", "u%2Ft", "%23y", "%40w") if f in shown], shown


def test_a_password_once_seen_is_hidden_where_it_shows_alone():
    redact("postgresql://optuna:dont%20tell@db/optuna")
    assert redact("authentication failed for password 'dont tell'") == "authentication failed for password '***'"


def test_a_libpq_keyword_password_with_escaped_quotes_is_hidden_where_it_shows_unescaped():
    assert redact(r"host=db password='it\'s a \\secret' user=u") == "host=db password=*** user=u"
    assert redact("authentication failed: it's a \\secret") == "authentication failed: ***"
