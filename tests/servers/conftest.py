"""Real servers for the tests of many workers: one PostgreSQL cluster and one MLflow server
per test session, each started the first time a test asks for it and stopped when the
session ends. Tests get a fresh, empty database each (`database`); where no PostgreSQL
server program can be had they skip, saying why."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from conftest import made_once
from servers.clusters import MlflowServer, Postgres, running

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    yield from running(Postgres(), "PostgreSQL")


@pytest.fixture
def database(postgres: Postgres, request: pytest.FixtureRequest) -> Callable[[], str]:
    """`database()`: the URL of a new, empty database (any number per test)."""
    stem = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    return lambda: postgres.database(f"{stem}_{next(_names)}")


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow server whose store is a PostgreSQL database and whose artifacts it serves
    itself over HTTP from a temporary folder (`--artifacts-destination`)."""
    made_once(tmp_path_factory, "mlflow_server")
    yield from running(MlflowServer(postgres.database("mlflow")), "MLflow server")
