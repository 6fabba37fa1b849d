"""Deleting replay rows far behind the training window (`--replay-keep-rows`), PostgreSQL only.

A replay that actors write for weeks grows without end while the trainer only ever samples
the newest W rows. With `--replay-keep-rows N` the replay source's worker thread, between
polls and only once it has caught up with the backlog, deletes the env_id's oldest rows
beyond the newest `rows_to_keep(N, W)`:

- only rows below the reader's cursor and below every pending gap (`reader.py`), so a row is
  never deleted before it was read, and a late commit into a gap is never touched;
- by `seq` range, a few thousand seqs per DELETE, each its own short autocommit transaction
  on a connection of its own, with a short lock timeout: writers insert new rows and never
  wait for these old ones, and a slow DELETE gives up instead of queueing anyone;
- for at most `RUN_BUDGET_S` per run and at most every `interval_s`, so batch preparation
  goes on; a big backlog of old rows is worked off over several runs.

A failure (server gone, lock timeout) is logged and retried at the next run; it never stops
training. SQLite is not supported: the trainer opens it read-only and a delete there would
take the write lock the actors need, so the setting asks for a postgresql:// replay.

A resume from an older checkpoint re-reads rows after its cursor; if more than the kept rows
arrived since, the oldest of those are gone and the refilled window is that much shorter.
"""

from __future__ import annotations

import logging
import time

import psycopg

from trainer.replay.postgres.connection import connect, is_connection_error
from trainer.replay.postgres.schema import SEQ_COLUMN

log = logging.getLogger(__name__)

MIN_MARGIN_ROWS = 1000  # kept beyond the window, however small the window
DELETE_SEQ_SPAN = 4096  # seqs per DELETE statement
RUN_BUDGET_S = 0.25  # at most this long deleting per run
MAX_INTERVAL_S = 5.0
LOCK_TIMEOUT_MS = 500
STATEMENT_TIMEOUT_MS = 10_000


def rows_to_keep(keep_rows: int, window: int) -> int:
    """The newest rows kept: N, but never fewer than the window plus a margin for its growth
    until the next run and for rows that are not usable (which the window does not hold)."""
    return max(keep_rows, window + max(window // 2, MIN_MARGIN_ROWS))


class PgRetention:
    """Deletes one env_id's old rows of a PostgreSQL replay (module docstring)."""

    def __init__(self, url: str, env_id: str, keep_rows: int, interval_s: float = MAX_INTERVAL_S):
        self.url, self.env_id, self.keep_rows = url, env_id, keep_rows
        self.interval_s = min(interval_s, MAX_INTERVAL_S)
        self.deleted = 0  # rows deleted by this process
        self.table_rows: int | None = None  # the server's estimate for the whole table
        self._conn: psycopg.Connection | None = None
        self._next_run = 0.0
        self._lo: int | None = None  # the lowest seq that may still hold a row of env_id
        self._failing = False

    def maybe_run(self, rows_held: int, window: int, below_seq: int) -> int:
        """Delete what is due of the `rows_held` rows of env_id the replay holds, keeping every
        row at or above `below_seq`; returns the rows deleted."""
        now = time.monotonic()
        excess = rows_held - rows_to_keep(self.keep_rows, window)
        if now < self._next_run:
            return 0
        self._next_run = now + self.interval_s
        try:
            deleted = self._run(excess, below_seq, now + RUN_BUDGET_S)
        except (psycopg.Error, ConnectionError) as exc:
            self._fail(exc)
            return 0
        if self._failing:
            log.info("replay retention works again")
            self._failing = False
        return deleted

    def reset(self) -> None:
        """The table was replaced: its seqs start again."""
        self._lo = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, application_name="selfplay-trainer-retention")
            self._conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
            self._conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        return self._conn

    def _run(self, excess: int, below_seq: int, deadline: float) -> int:
        conn = self._connection()
        deleted = 0
        if excess > 0:
            # The oldest `excess` rows end at this seq: an index range as long as the rows
            # written since the last run, not a scan of the rows kept.
            row = conn.execute(
                f"SELECT {SEQ_COLUMN} FROM transitions WHERE env_id = %s ORDER BY {SEQ_COLUMN} OFFSET %s LIMIT 1",
                (self.env_id, excess - 1),
            ).fetchone()
            if row is not None:
                deleted = self._delete_through(conn, min(row[0], below_seq - 1), deadline)
        row = conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 'transitions'::regclass"
        ).fetchone()
        self.table_rows = int(row[0]) if row and row[0] >= 0 else None
        return deleted

    def _delete_through(self, conn: psycopg.Connection, cut: int, deadline: float) -> int:
        """Delete env_id's rows with seq <= cut, span by span, until done or the deadline."""
        if self._lo is None:
            (self._lo,) = conn.execute(
                f"SELECT min({SEQ_COLUMN}) FROM transitions WHERE env_id = %s", (self.env_id,)
            ).fetchone()
        deleted = 0
        while self._lo is not None and self._lo <= cut and time.monotonic() < deadline:
            hi = min(cut, self._lo + DELETE_SEQ_SPAN - 1)
            cur = conn.execute(
                f"DELETE FROM transitions WHERE env_id = %s AND {SEQ_COLUMN} BETWEEN %s AND %s",
                (self.env_id, self._lo, hi),
            )
            deleted += max(cur.rowcount, 0)
            self._lo = hi + 1
        self.deleted += deleted
        return deleted

    def _fail(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning("replay retention failed (%s); retrying in %.0f s", str(exc).strip(), self.interval_s)
            self._failing = True
        if is_connection_error(exc) or (self._conn is not None and self._conn.broken):
            self.close()
