"""The URL forms of --storage against a real PostgreSQL server, and a missing driver in one line."""

from __future__ import annotations

import optuna
import pytest

from conftest import TINY, cli

from search.engine.optuna_storage import open_storage
from search.errors import SearchError


def test_postgresql_url_opens_with_psycopg_3(database, tmp_path):
    url = database()
    storage = open_storage(url, tmp_path)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.engine.dialect.driver == "psycopg"  # SQLAlchemy 2.1's default for postgresql://
    study = optuna.create_study(study_name="urls", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="urls", storage=url).trials) == 2
    same = open_storage(url.replace("postgresql://", "postgresql+psycopg://"), tmp_path)
    assert same.engine.dialect.driver == "psycopg"


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(("scheme", "module", "package"), [
    ("postgresql+psycopg2", "psycopg2", "psycopg2-binary"),
    ("mysql", "MySQLdb", "mysqlclient"),
    ("mysql+pymysql", "pymysql", "pymysql"),
    ("postgresql+pg8000", "pg8000", "the package that provides pg8000"),  # a driver we have no name for
])
def test_a_missing_driver_is_one_line_naming_the_package(postgres, tmp_path, scheme, module, package):
    if _installed(module):
        pytest.skip(f"{module} is installed here")
    with pytest.raises(SearchError) as raised:
        open_storage(f"{scheme}://postgres:secret@127.0.0.1:{postgres.port}/none", tmp_path)
    message = str(raised.value)
    assert package in message and "\n" not in message
    assert "secret" not in message  # the URL is redacted


def test_the_command_line_says_which_driver_to_install_without_a_traceback(postgres, digits_folders, tmp_path):
    if _installed("psycopg2"):
        pytest.skip("psycopg2 is installed here")
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{postgres.port}/none"
    done = cli("run", str(TINY), "--data", str(digits_folders), "--algorithm", "tpe", "--storage", url,
               "--runs-dir", str(tmp_path), "--no-tracking")
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert errors == [f"error: --storage {url}: the postgresql+psycopg2 driver is not installed: pip install "
                      "'psycopg2-binary'."]
