"""Connecting to a PostgreSQL replay by URL, and saying in one line why it failed.

Failures split by what helps: a server that is down or restarting ends by itself, so the
reader waits (`ConnectionLost`); a bad password, a missing database or a malformed URL do
not, so they are errors (`ReplayConnectError`, exit 2) naming the URL without its password.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict

from trainer.replay.backend import is_postgres_url, redact_url  # noqa: F401  (re-exported)
from trainer.replay.schema import SchemaError

CONNECT_TIMEOUT_S = 5  # a host that drops packets fails within this instead of hanging


class ReplayConnectError(SchemaError):
    """The replay URL cannot work as given (bad password, no such database, malformed URL)."""


class ConnectionLost(ConnectionError):
    """The server cannot be reached now (down, restarting, connection cut); retry later."""


# Server messages (libpq gives no SQLSTATE for connection failures) that waiting will not fix.
_FATAL_PATTERNS = (
    (
        r"password authentication failed|no password supplied|authentication failed",
        "bad user name or password",
    ),
    (r'database "[^"]*" does not exist', "no such database"),
    (r'role "[^"]*" does not exist', "no such user"),
    (r"failed to resolve host|could not translate host name", "unknown host"),
    (r"no pg_hba.conf entry", "the server refuses this client (pg_hba.conf)"),
)


def describe_failure(url: str, exc: BaseException) -> ReplayConnectError | ConnectionLost:
    """The exception to raise for a failed connect: fatal or transient, with one clear line."""
    where = redact_url(url)
    text = str(exc).strip()
    detail = text.splitlines()[0] if text else type(exc).__name__
    detail = re.sub(r"^connection failed: ", "", detail)
    if isinstance(exc, psycopg.ProgrammingError):
        return ReplayConnectError(f"replay URL {where} is malformed: {detail}")
    for pattern, what in _FATAL_PATTERNS:
        if re.search(pattern, text, re.IGNORECASE):
            return ReplayConnectError(f"cannot use replay database {where}: {what} ({detail})")
    return ConnectionLost(f"cannot reach the replay server {where}: {detail}")


def connect(url: str, application_name: str = "selfplay-trainer") -> psycopg.Connection:
    """An autocommit connection (no transaction stays open between our statements)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise describe_failure(url, exc) from None
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    params.setdefault("application_name", application_name)
    try:
        return psycopg.connect(autocommit=True, **params)
    except psycopg.Error as exc:
        raise describe_failure(url, exc) from None


def is_connection_error(exc: BaseException) -> bool:
    """A query failed for a reason on the server's side that passes (restart, network, a
    statement timeout behind a long lock), not because of the query: reconnect and retry."""
    return isinstance(exc, (ConnectionLost, psycopg.OperationalError))
