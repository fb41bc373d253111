"""A PostgreSQL login role that must give its password, on the session's cluster (whose other
users are trusted): for tests of passwords in URLs and of a wrong one."""

from __future__ import annotations

import time
import urllib.parse

from servers.clusters import Postgres


def password_role(postgres: Postgres, name: str, password: str) -> str:
    """Create role `name` with `password` (its own database `name`, password authentication on
    127.0.0.1); its URL, the password percent-encoded."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(postgres.url("postgres"), autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
    hba = postgres.data / "pg_hba.conf"
    hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())  # first match wins
    postgres._run(str(postgres.bin / "pg_ctl"), "-D", str(postgres.data), "reload")  # noqa: SLF001
    wrong = f"postgresql://{name}:wrong@127.0.0.1:{postgres.port}/{name}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server reads pg_hba.conf again soon after the signal
        try:
            psycopg.connect(wrong).close()
        except psycopg.OperationalError:
            break
        time.sleep(0.1)
    return f"postgresql://{name}:{urllib.parse.quote(password, safe='')}@127.0.0.1:{postgres.port}/{name}"
