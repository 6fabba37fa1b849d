"""The trainer's read side of a PostgreSQL replay: the SQLite `ReplayReader`'s interface.

Rows are tailed in insert order by `seq` (see `schema.py`), in short REPEATABLE READ
read-only transactions, each an index range on `seq`: no COUNT(*), no random order, no
lock that a writer waits for. Rows are decoded by the SQLite reader's `decode_rows`.

Out-of-order commits. A seq is drawn when a row is inserted, not when it commits, so a
slow transaction can commit seq 10 after we already read seq 11. The reader therefore keeps
`cursor`, the highest seq it has looked at, and `pending`, the seqs at or below the cursor
it has not seen yet ("holes", kept as ranges `(lo, hi)`), each with the `xmax` of the
snapshot that first passed it:

- a hole can only be filled by a transaction that had drawn it before that snapshot, and a
  transaction takes its id before it draws a seq (`replay_next_seq()`), so its id is below
  that `xmax`;
- once a later snapshot's `xmin` (the oldest transaction still running) reaches that `xmax`,
  every such transaction has ended: the hole is either visible in that snapshot (read it)
  or will never be filled (a rollback, an `ON CONFLICT` that updated instead, numbers a
  crash skipped), and is dropped.

Each read asks for the rows in the pending ranges and for the rows after the cursor, both in
one snapshot. No committed row is skipped and none is read twice. `pending` stays small: only
rows of transactions open during a read, and numbers that will never be filled, until the
next read that sees them finished. A checkpoint stores the cursor and `pending`.
"""

from __future__ import annotations

import logging
from collections import Counter

import psycopg

from trainer.games import GameSpec
from trainer.replay.postgres.connection import (
    ConnectionLost,
    connect,
    is_connection_error,
    redact_url,
)
from trainer.replay.postgres.schema import (
    AUTO_MIGRATE_MAX_BYTES,
    SEQ_COLUMN,
    add_seq_column,
    column_names,
    read_game_spec,
    table_names,
)
from trainer.replay.reader import (
    DEFAULT_CHUNK_ROWS,
    REQUIRED_COLUMNS,
    DecodedRows,
    decode_rows,
    too_few_rows,
)
from trainer.replay.schema import MODEL_STEP_COLUMN, MissingMetadataError, SchemaError
from trainer.sources.wait_reason import WaitKind, WaitReason

log = logging.getLogger(__name__)

READ_TIMEOUT_MS = 30_000
BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# The first statement of the transaction: it fixes the snapshot every later one reads.
SNAPSHOT_BOUNDS = (
    "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint FROM pg_current_snapshot() s"
)


NOT_PENDING = f"NOT EXISTS (SELECT 1 FROM unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi) WHERE t.{SEQ_COLUMN} BETWEEN r.lo AND r.hi)"


def _split(lo: int, hi: int, present: list[int]) -> list[tuple[int, int]]:
    """The ranges of lo..hi (inclusive; empty if hi < lo) not in the sorted seqs `present`."""
    out, start = [], lo
    for s in present:
        if s < start:
            continue
        if s > hi:
            break
        if s > start:
            out.append((start, s - 1))
        start = s + 1
    if start <= hi:
        out.append((start, hi))
    return out


class PgReplayReader:
    """Reads one env_id's rows of a PostgreSQL replay, oldest first, in short chunks.

    The same interface as `trainer.replay.reader.ReplayReader`, with `seq` in the role of
    the rowid; `pending` is the part of the cursor that SQLite does not need (module doc).
    """

    def __init__(
        self,
        url: str,
        env_id: str,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        busy_timeout_s: float = 2.0,
    ):
        self.url = url
        self.db_path = redact_url(url)  # what messages name; never the password
        self.env_id = env_id
        self.chunk_rows = chunk_rows
        # busy_timeout_s is SQLite's lock wait; here no writer can block a read, so only a
        # read stuck behind an operator's table lock (a migration) gives up, and is retried.
        self.statement_timeout_ms = READ_TIMEOUT_MS
        self.cursor = 0
        # (lo, hi, xmax): seqs lo..hi not read yet, passed by the read whose snapshot had xmax.
        self.pending: list[tuple[int, int, int]] = []
        self.newest_timestamp: int | None = None
        self.model_step: int | None = None
        self.spec: GameSpec | None = None
        self.has_model_step = False
        # Tables up to this size get `seq` added by the reader itself (schema.py says why).
        self.auto_migrate_max_bytes = AUTO_MIGRATE_MAX_BYTES
        self._conn: psycopg.Connection | None = None
        self._table_oid: int | None = None  # of the transitions table we opened
        self._select = ""

    # --- connection ------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, application_name="selfplay-trainer-reader")
            self._conn.execute(f"SET statement_timeout = {self.statement_timeout_ms}")
        return self._conn

    def _lost(self, exc: BaseException) -> ConnectionLost:
        """Drop the broken connection; the next call reconnects and continues from the cursor."""
        self.close()
        if isinstance(exc, ConnectionLost):
            return exc
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ConnectionLost(f"replay server {self.db_path} unavailable: {detail}")

    def probe(self, min_rows: int = 0) -> WaitReason | None:
        """Why the replay cannot be trained from yet, or None when it can (connects if needed).

        A server that cannot be reached is a reason to wait (WaitKind.CONNECTION_LOST);
        raises SchemaError (ReplayConnectError included) for what waiting will not fix.
        """
        try:
            conn = self._connection()
            if "transitions" not in table_names(conn):
                return WaitReason(
                    WaitKind.NO_TABLE, f"replay database {self.db_path} has no transitions table yet"
                )
            if self.spec is None:
                try:
                    self.open()
                except MissingMetadataError as exc:
                    return WaitReason(WaitKind.NO_METADATA, f"{exc} (waiting for the actor to write it)")
            if min_rows > 0:
                (n,) = conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM transitions WHERE env_id = %s LIMIT %s) t",
                    (self.env_id, min_rows),
                ).fetchone()
                return too_few_rows(n, min_rows, self.env_id, self.db_path)
            return None
        except (psycopg.Error, ConnectionLost) as exc:
            if not is_connection_error(exc):
                raise
            return WaitReason(WaitKind.CONNECTION_LOST, str(self._lost(exc)))

    def open(self) -> None:
        try:
            conn = self._connection()
            spec = read_game_spec(conn, self.env_id)
            self._check_schema(conn)
            self.spec = spec
        except psycopg.Error as exc:
            if is_connection_error(exc):
                raise self._lost(exc) from None
            raise

    def _check_schema(self, conn: psycopg.Connection) -> None:
        cols = column_names(conn, "transitions")
        if not cols:
            raise SchemaError(f"{self.db_path}: table transitions is missing")
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise SchemaError(
                f"{self.db_path}: table transitions has no column {', '.join(repr(c) for c in missing)} "
                f"(the replay contract requires it); columns found: {', '.join(sorted(cols))}"
            )
        if add_seq_column(conn, self.auto_migrate_max_bytes):
            log.info(
                "added the %r column to transitions in %s (new rows are tailed by it)",
                SEQ_COLUMN,
                self.db_path,
            )
        self.has_model_step = MODEL_STEP_COLUMN in cols
        (self._table_oid,) = conn.execute("SELECT to_regclass('transitions')::oid").fetchone()
        self._columns = f"t.{SEQ_COLUMN}, t.observation, t.action, t.policy_probs, t.mcts_value, t.game_outcome, t.timestamp"
        self._columns += f", t.{MODEL_STEP_COLUMN}" if self.has_model_step else ""
        self._select = f"SELECT {self._columns} FROM transitions t"

    def replaced(self) -> str | None:
        """Why the rows read so far are gone, or None: the table was dropped or recreated
        since we opened it, or its seqs end before the cursor (a checkpoint of another
        table). A lost connection is not this: it raises."""
        if self._table_oid is None or not self.cursor:
            return None
        (oid,) = self._in_snapshot(
            lambda conn, *_: conn.execute("SELECT to_regclass('transitions')::oid").fetchone()
        )
        if oid != self._table_oid:
            return "the table was dropped" if oid is None else "the table was recreated"
        if (top := self.max_rowid()) < self.cursor:
            return f"its rows end at seq {top}, before seq {self.cursor} already read"
        return None

    def reopen(self) -> None:
        """Forget what was read: the next probe() looks at the tables afresh and read_new()
        starts at the first row."""
        self.close()
        self.cursor, self.pending, self.spec, self._table_oid = 0, [], None, None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _in_snapshot(self, work):
        """Run `work(conn, xmin, xmax)` in one read-only snapshot; connection loss -> ConnectionLost."""
        if self.spec is None:
            self.open()
        try:
            conn = self._connection()
            conn.execute(BEGIN_SNAPSHOT)
            try:
                xmin, xmax = conn.execute(SNAPSHOT_BOUNDS).fetchone()
                out = work(conn, xmin, xmax)
            except BaseException:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out
        except psycopg.Error as exc:
            if is_connection_error(exc):
                raise self._lost(exc) from None
            raise

    # --- reading ---------------------------------------------------------------------------
    def read_new(self, limit: int | None = None) -> DecodedRows:
        """Usable rows of env_id not read yet (at most `limit` new ones past the cursor,
        plus any pending ones that committed since)."""
        limit = limit or self.chunk_rows
        fetched = self._in_snapshot(lambda conn, xmin, xmax: self._fetch_new(conn, xmin, xmax, limit))
        filled, rows, new_cursor, seen, xmin, xmax = fetched
        self._advance(filled, new_cursor, seen, xmin, xmax)
        assert self.spec is not None
        out = decode_rows(filled + rows, self.spec, self.has_model_step)
        if out.newest_timestamp is not None:
            self.newest_timestamp = max(self.newest_timestamp or 0, out.newest_timestamp)
        if out.model_step is not None:
            self.model_step = out.model_step
        return out

    def _fetch_new(self, conn: psycopg.Connection, xmin: int, xmax: int, limit: int):
        filled: list[tuple] = []
        if self.pending:
            filled = conn.execute(
                f"SELECT {self._columns} FROM unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi) "
                f"JOIN transitions t ON t.{SEQ_COLUMN} BETWEEN r.lo AND r.hi WHERE t.env_id = %s ORDER BY t.{SEQ_COLUMN}",
                (*self._pending_bounds(), self.env_id),
                binary=True,
            ).fetchall()
        rows = conn.execute(
            f"{self._select} WHERE {SEQ_COLUMN} > %s AND env_id = %s ORDER BY {SEQ_COLUMN} LIMIT %s",
            (self.cursor, self.env_id, limit),
            binary=True,
        ).fetchall()
        # Every seq after the cursor up to where this read stops, of any env_id: the ones
        # missing are the holes (other games' rows are not holes, just not ours).
        upto_clause, args = "", [self.cursor]
        if len(rows) == limit:
            upto_clause, args = f" AND {SEQ_COLUMN} <= %s", [self.cursor, rows[-1][0]]
        seen = [
            r[0]
            for r in conn.execute(
                f"SELECT {SEQ_COLUMN} FROM transitions WHERE {SEQ_COLUMN} > %s{upto_clause} ORDER BY {SEQ_COLUMN}",
                args,
            ).fetchall()
        ]
        new_cursor = seen[-1] if seen else self.cursor
        return filled, rows, new_cursor, seen, xmin, xmax

    def _pending_bounds(self) -> tuple[list[int], list[int]]:
        return [lo for lo, _, _ in self.pending], [hi for _, hi, _ in self.pending]

    def _advance(self, filled: list[tuple], new_cursor: int, seen: list[int], xmin: int, xmax: int) -> None:
        """Move the cursor and update the holes (module doc)."""
        still: list[tuple[int, int, int]] = []
        done = sorted(r[0] for r in filled)
        for lo, hi, x in self.pending:
            if x <= xmin:
                continue  # every transaction that could fill it has ended: what did is in `filled`
            still.extend((a, b, x) for a, b in _split(lo, hi, done))
        if xmax > xmin:  # some transaction was running: the new holes may still fill
            still.extend((a, b, xmax) for a, b in _split(self.cursor + 1, new_cursor, seen))
        self.pending = still
        self.cursor = new_cursor

    def read_newest(self, n_valid: int, upto_rowid: int) -> DecodedRows:
        """The newest `n_valid` usable rows of env_id with seq <= upto_rowid, oldest first
        (pending seqs excluded: they are read when they commit). Used to refill the window
        on resume; skipped rows are not reported again."""
        los, his = self._pending_bounds()
        parts: list[DecodedRows] = []
        have, upto = 0, upto_rowid
        while have < n_valid:
            rows = self._in_snapshot(
                lambda conn, *_, upto=upto: conn.execute(
                    f"{self._select} WHERE t.{SEQ_COLUMN} <= %s AND t.env_id = %s AND {NOT_PENDING} "
                    f"ORDER BY t.{SEQ_COLUMN} DESC LIMIT %s",
                    (upto, self.env_id, los, his, self.chunk_rows),
                    binary=True,
                ).fetchall()
            )
            if not rows:
                break
            upto = rows[-1][0] - 1
            assert self.spec is not None
            part = decode_rows(rows[::-1], self.spec, self.has_model_step)
            part = part.newest(n_valid - have)
            parts.append(part)
            have += len(part)
        assert self.spec is not None
        out = DecodedRows.concat(parts[::-1], self.spec)
        out.bad = Counter()
        if out.newest_timestamp is not None:
            self.newest_timestamp = max(self.newest_timestamp or 0, out.newest_timestamp)
        if out.model_step is not None and self.model_step is None:
            self.model_step = out.model_step
        return out

    def count_rows(self, upto_rowid: int | None = None) -> int:
        """Rows of env_id (up to a seq, pending ones excluded). A scan: once at start, never per batch."""
        sql, args = "SELECT count(*) FROM transitions t WHERE t.env_id = %s", [self.env_id]
        if upto_rowid is not None:
            sql += f" AND t.{SEQ_COLUMN} <= %s AND {NOT_PENDING}"
            args += [upto_rowid, *self._pending_bounds()]

        def count(conn: psycopg.Connection, *_) -> int:
            conn.execute("SET LOCAL statement_timeout = 0")  # a scan of a big table may take a while
            return int(conn.execute(sql, args).fetchone()[0])

        return self._in_snapshot(count)

    def max_rowid(self) -> int:
        (m,) = self._in_snapshot(
            lambda conn, *_: conn.execute(f"SELECT max({SEQ_COLUMN}) FROM transitions").fetchone()
        )
        return int(m or 0)

    def __enter__(self) -> PgReplayReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
