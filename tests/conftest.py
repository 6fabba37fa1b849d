"""Shared fixtures. `pg_url`: a fresh database on a throwaway PostgreSQL server (pg_server.py)."""

import pytest
from pg_server import PgServer


@pytest.fixture(scope="session")
def pg_server():
    if PgServer.find_binaries() is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb) are not installed; `scripts/setup.sh --test` installs them"
        )
    server = PgServer.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.create_database()
