"""The trainer's read side of the replay DB (contract section 1, reader rules).

Actors keep writing while we read, some of them with SQLite's rollback journal, where a
reader's shared lock blocks a writer's commit. So every query here is short: new rows are
fetched in chunks by `rowid > cursor ORDER BY rowid LIMIT n` (an index range on the rowid,
never a table scan), the rows are copied out with `fetchall()` and the read transaction ends
before any decoding starts. The connection is read-only (`mode=ro`): we cannot block a
writer by taking a write lock, and we cannot create or alter the file.

Reading never gives up on the file for good: a hot journal or a busy DB is a reason to wait
(`read_failure`; the error codes are interpreted here and nowhere else), a damaged page costs
the rows on it (counted as `unreadable`), and a file replaced under the connection is noticed
(`replaced()`) so the caller can re-open it.

Decoding is vectorised per chunk (one `b"".join` + `np.frombuffer` per column), because a
restart may load a few hundred thousand rows before the first step.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.games import GameSpec
from trainer.replay.codec import F32, U32
from trainer.replay.schema import (
    MODEL_STEP_COLUMN,
    MissingMetadataError,
    SchemaError,
    read_game_spec,
    table_names,
)
from trainer.sources.wait_reason import WaitKind, WaitReason

log = logging.getLogger(__name__)

# Columns the reader needs; the other contract columns (state, next_state, ...) are unused.
REQUIRED_COLUMNS = (
    "env_id",
    "observation",
    "action",
    "policy_probs",
    "mcts_value",
    "game_outcome",
    "timestamp",
)

# Why a row was skipped; one reason per row, the first that applies in this order.
BAD_OBS_LENGTH = "obs_length"  # observation blob NULL, not a blob, or the wrong length
BAD_ACTION = "bad_action"  # action blob not 4 bytes, or out of range
BAD_VALUE_NULL = "value_null"  # game_outcome and mcts_value both NULL
BAD_NONFINITE = "nonfinite"  # NaN/inf in observation, policy or value
BAD_ILLEGAL_ACTION = "illegal_action"  # the action is not legal in the row's own legal mask
BAD_VALUE_RANGE = "value_range"  # the value (game_outcome, else mcts_value) is outside [-1, 1]
BAD_POLICY_MASS = "policy_mass"  # policy_probs' mass on legal moves overflows float32
BAD_UNREADABLE = "unreadable"  # rowids in a damaged part of the file, skipped without reading them
BAD_REASONS = (
    BAD_OBS_LENGTH,
    BAD_ACTION,
    BAD_VALUE_NULL,
    BAD_NONFINITE,
    BAD_ILLEGAL_ACTION,
    BAD_VALUE_RANGE,
    BAD_POLICY_MASS,
    BAD_UNREADABLE,
)

DEFAULT_CHUNK_ROWS = 4096
MAX_ROWID = 2**63 - 1

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 5, 6, 8, 10, 11
_SQLITE_CANTOPEN, _SQLITE_NOTADB = 14, 26


# What a SQLite error means for the reader is decided here and nowhere else. Python exposes
# the result code; errors raised without one (older builds) fall back to SQLite's messages.
def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def too_few_rows(n: int, min_rows: int, env_id: str, where: object) -> WaitReason | None:
    """The wait while a replay holds fewer than --min-rows rows of the game (either backend)."""
    if n >= min_rows:
        return None
    return WaitReason(
        WaitKind.TOO_FEW_ROWS, f"{n} rows of env_id {env_id!r} in {where}, need {min_rows} (--min-rows)"
    )


def is_transient(exc: BaseException) -> bool:
    """A lock/busy error that goes away by itself (a writer is committing)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = _primary_code(exc)
    if code is not None:
        return code in (_SQLITE_BUSY, _SQLITE_LOCKED)
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def is_hot_journal(exc: BaseException) -> bool:
    """A killed writer left a journal that must be rolled back (or a WAL to recover) first,
    which a read-only connection may not do: any writer's next open does it."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = _primary_code(exc)
    if code is not None:
        return code == _SQLITE_READONLY
    return "readonly database" in str(exc).lower()


def is_corrupt(exc: BaseException) -> bool:
    """Part of the file is not a valid SQLite page (a damaged disk, a bad copy)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = _primary_code(exc)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return "malformed" in str(exc).lower()


def _file_unreadable(exc: BaseException) -> bool:
    """The file cannot be read right now (damaged, gone, an I/O error), as opposed to SQL
    that does not fit it (a dropped table), which waiting will not mend."""
    code = _primary_code(exc)
    if code is not None:
        return code in (_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_CANTOPEN, _SQLITE_NOTADB)
    return is_corrupt(exc)


def read_failure(exc: BaseException, db_path: str | Path) -> WaitReason | None:
    """Why a read of a DB that was readable before failed: busy (retry shortly) or
    unreadable (retry on the next poll); None for an error waiting will not mend."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.ProgrammingError):
        return None
    if is_transient(exc):
        return WaitReason(WaitKind.DB_BUSY, f"replay DB {db_path} is busy ({exc})")
    if is_hot_journal(exc):
        return WaitReason(
            WaitKind.DB_UNREADABLE,
            f"replay DB {db_path} has a hot journal from a writer that died mid-transaction; "
            f"a read-only reader cannot roll it back, the next writer to open the DB will ({exc})",
        )
    if _file_unreadable(exc):
        return WaitReason(WaitKind.DB_UNREADABLE, f"replay DB {db_path} cannot be read ({exc})")
    return None


@dataclass
class DecodedRows:
    """Usable rows of one chunk, in rowid order, plus what was skipped."""

    rowids: np.ndarray  # int64 [n]
    obs: np.ndarray  # float32 [n, obs_size]
    policy: np.ndarray  # float32 [n, num_actions], sums to 1 over legal moves, 0 elsewhere
    value: np.ndarray  # float32 [n], game outcome from the mover's view
    # float32 [n], the row's own mcts_value (the search's root value, mover's view); NaN where
    # it is NULL or outside [-1, 1], so the value target falls back to the outcome there.
    search_value: np.ndarray
    bad: Counter = field(default_factory=Counter)  # reason -> rows skipped
    policy_onehot: int = 0  # usable rows whose policy_probs was NULL/wrong/empty: one-hot of action
    newest_timestamp: int | None = None
    model_step: int | None = None  # newest non-NULL model_step of the chunk
    scanned: int = 0  # rows of env_id read, usable or not

    def __len__(self) -> int:
        return int(self.rowids.shape[0])

    def newest(self, n: int) -> DecodedRows:
        """The newest n rows (all when there are fewer); what was skipped stays with the chunk."""
        if len(self) <= n:
            return self
        keep = len(self) - n
        return DecodedRows(
            self.rowids[keep:],
            self.obs[keep:],
            self.policy[keep:],
            self.value[keep:],
            self.search_value[keep:],
            newest_timestamp=self.newest_timestamp,
            model_step=self.model_step,
        )

    def value_target(self, mix: float) -> np.ndarray:
        """The value head's target `(1 - mix) * z + mix * q`: z the outcome, q the search's
        value. A row without a usable q keeps z (a row without z already holds q as z)."""
        if mix == 0.0:
            return self.value
        q = np.where(np.isfinite(self.search_value), self.search_value, self.value)
        return ((1.0 - mix) * self.value + mix * q).astype(np.float32)

    @staticmethod
    def empty(spec: GameSpec) -> DecodedRows:
        return DecodedRows(
            np.zeros(0, np.int64),
            np.zeros((0, spec.obs_size), np.float32),
            np.zeros((0, spec.num_actions), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
        )

    @staticmethod
    def concat(parts: list[DecodedRows], spec: GameSpec) -> DecodedRows:
        if not parts:
            return DecodedRows.empty(spec)
        bad: Counter = Counter()
        for p in parts:
            bad.update(p.bad)
        stamps = [p.newest_timestamp for p in parts if p.newest_timestamp is not None]
        steps = [p.model_step for p in parts if p.model_step is not None]
        return DecodedRows(
            np.concatenate([p.rowids for p in parts]),
            np.concatenate([p.obs for p in parts]),
            np.concatenate([p.policy for p in parts]),
            np.concatenate([p.value for p in parts]),
            np.concatenate([p.search_value for p in parts]),
            bad,
            sum(p.policy_onehot for p in parts),
            max(stamps) if stamps else None,
            steps[-1] if steps else None,
            sum(p.scanned for p in parts),
        )


def _blob_lengths(blobs: tuple) -> np.ndarray:
    # -1 for NULL or a non-blob value (SQLite's dynamic typing lets a TEXT into a BLOB column).
    return np.fromiter((len(b) if type(b) is bytes else -1 for b in blobs), np.int64, len(blobs))


def _join_fixed(blobs: tuple, ok: np.ndarray, nbytes: int, dtype: np.dtype, width: int) -> np.ndarray:
    """[n, width] array from blobs of `nbytes` each; rows where `ok` is False are zeros."""
    if ok.all():
        buf = b"".join(blobs)
    else:
        zero = bytes(nbytes)
        buf = b"".join([b if good else zero for b, good in zip(blobs, ok.tolist())])
    return np.frombuffer(buf, dtype=dtype).reshape(len(blobs), width)


def _floats(values: tuple) -> np.ndarray:
    """float64 [n] from REAL cells; NULL and non-numbers become NaN."""
    try:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                pass
        return out


def decode_rows(rows: list[tuple], spec: GameSpec, has_model_step: bool) -> DecodedRows:
    """Decode fetched rows `(rowid, observation, action, policy_probs, mcts_value,
    game_outcome, timestamp[, model_step])` into arrays, skipping and counting bad rows."""
    n = len(rows)
    if n == 0:
        return DecodedRows.empty(spec)
    a, obs_size = spec.num_actions, spec.obs_size
    cols = list(zip(*rows))
    rowids = np.fromiter(cols[0], np.int64, n)
    obs_b, act_b, pol_b, mcts, outcome, stamps = cols[1:7]

    obs_ok = _blob_lengths(obs_b) == 4 * obs_size
    obs = _join_fixed(obs_b, obs_ok, 4 * obs_size, F32, obs_size)
    act_len_ok = _blob_lengths(act_b) == 4
    actions = _join_fixed(act_b, act_len_ok, 4, U32, 1)[:, 0].astype(np.int64)
    act_ok = act_len_ok & (actions < a)
    actions = np.where(act_ok, actions, 0)
    pol_given = _blob_lengths(pol_b) == 4 * a
    policy = _join_fixed(pol_b, pol_given, 4 * a, F32, a)

    value = _floats(tuple(o if o is not None else m for o, m in zip(outcome, mcts)))
    search_value = _floats(mcts)
    with np.errstate(invalid="ignore"):
        search_value[~(np.abs(search_value) <= 1.0)] = np.nan
    value_null = np.array([o is None and m is None for o, m in zip(outcome, mcts)])

    pol_finite = np.isfinite(policy).all(axis=1)
    finite = np.isfinite(obs).all(axis=1) & np.isfinite(value) & (pol_finite | ~pol_given)
    legal = spec.legal_masks(obs)
    action_legal = legal[np.arange(n), actions]
    with np.errstate(invalid="ignore"):
        value_in_range = np.abs(value) <= 1.0

    # Policy target: mass on legal moves only, renormalised; one-hot of the action where the
    # row has no usable distribution (NULL, wrong length, or no mass on a legal move). Finite
    # probabilities can still sum to inf in float32, which would divide the target to zeros.
    use_given = (pol_given & pol_finite)[:, None]
    policy = np.where(legal & use_given, np.maximum(policy, 0.0), 0.0).astype(np.float32)
    with np.errstate(over="ignore"):
        mass = policy.sum(axis=1)
    mass_finite = np.isfinite(mass)

    reasons = (
        (BAD_OBS_LENGTH, ~obs_ok),
        (BAD_ACTION, ~act_ok),
        (BAD_VALUE_NULL, value_null),
        (BAD_NONFINITE, ~finite),
        (BAD_ILLEGAL_ACTION, ~action_legal),
        (BAD_VALUE_RANGE, ~value_in_range),
        (BAD_POLICY_MASS, ~mass_finite),
    )
    good = np.ones(n, dtype=bool)
    bad: Counter = Counter()
    for reason, mask in reasons:
        hit = good & mask
        if hit.any():
            bad[reason] += int(hit.sum())
            good &= ~hit

    mass[~mass_finite] = 1.0  # skipped rows; keeps the division quiet
    onehot = mass <= 0.0
    policy[onehot] = 0.0
    policy[onehot, actions[onehot]] = 1.0
    mass[onehot] = 1.0
    policy /= mass[:, None]

    newest_ts = None
    valid_stamps = [t for t in stamps if type(t) is int]
    if valid_stamps:
        newest_ts = max(valid_stamps)
    model_step = None
    if has_model_step:
        model_step = next((int(s) for s in reversed(cols[7]) if type(s) is int), None)

    if good.all():
        sel = slice(None)
    else:
        sel = np.flatnonzero(good)
    return DecodedRows(
        rowids[sel],
        np.ascontiguousarray(obs[sel], dtype=np.float32),
        policy[sel],
        value[sel].astype(np.float32),
        search_value[sel].astype(np.float32),
        bad,
        int((onehot & good).sum()),
        newest_ts,
        model_step,
        n,
    )


def _first_true(pred, lo: int, hi: int) -> int | None:
    """The smallest x in (lo, hi] with pred(x), for a pred that stays true once true
    (galloping, then bisection: O(log(x - lo)) calls); None if pred(hi) is false."""
    step, last_false = 1, lo
    while True:
        x = min(lo + step, hi)
        if pred(x):
            break
        if x >= hi:
            return None
        last_false, step = x, step * 2
    while x - last_false > 1:
        mid = (last_false + x) // 2
        if pred(mid):
            x = mid
        else:
            last_false = mid
    return x


def sqlite_ro_uri(path: str | Path) -> str:
    # as_uri() percent-encodes '?', '#' and '%' in the path, which a raw "file:" string would not.
    return Path(path).resolve().as_uri() + "?mode=ro"


class ReplayReader:
    """Reads one env_id's rows of a replay DB, oldest first, in short chunks.

    `cursor` is the highest rowid already read (of any env_id); `read_new()` returns the
    usable rows after it and advances it. Open lazily: `probe()` says why it cannot be read
    yet, `open()` connects, checks the columns and reads the game's shapes.

    A damaged part of the file does not stop the reader: `read_new()` reads up to it, skips
    the rowids it cannot read (counted as `unreadable`) and goes on after them. A file that was
    deleted or replaced under an open connection is noticed by `replaced()`.
    """

    def __init__(
        self,
        db_path: str | Path,
        env_id: str,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        busy_timeout_s: float = 2.0,
    ):
        self.db_path = Path(db_path)
        self.env_id = env_id
        self.chunk_rows = chunk_rows
        self.busy_timeout_s = busy_timeout_s
        self.cursor = 0
        # Rows at or below the cursor still to come: none in SQLite, which commits writers one
        # at a time in rowid order (a PostgreSQL replay has some; the source saves them).
        self.pending: list = []
        self.newest_timestamp: int | None = None
        self.model_step: int | None = None
        self.spec: GameSpec | None = None
        self.has_model_step = False
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file we opened
        self._schema_version: int | None = None
        self._select = ""

    # --- connection ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # Identify the file before opening it: if it is swapped in between, the next
        # replaced() sees a mismatch and we re-open, which is harmless.
        st = os.stat(self.db_path)
        self._file_id = (st.st_dev, st.st_ino)
        # isolation_level=None: no implicit transaction stays open between our queries.
        return sqlite3.connect(
            sqlite_ro_uri(self.db_path),
            uri=True,
            timeout=self.busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )

    def probe(self, min_rows: int = 0) -> WaitReason | None:
        """Why the DB cannot be trained from yet, or None when it can (opens it if needed).

        Raises SchemaError for problems that waiting will not fix (a missing column, a file
        that is not SQLite). A busy DB or a hot journal is a reason to wait.
        """
        if not self.db_path.exists():
            return WaitReason(WaitKind.NO_DB, f"replay DB {self.db_path} does not exist yet")
        try:
            if self._conn is None:
                self._conn = self._connect()
            if "transitions" not in table_names(self._conn):
                return WaitReason(WaitKind.NO_TABLE, f"replay DB {self.db_path} has no transitions table yet")
            if self.spec is None:
                try:
                    self.open()
                except MissingMetadataError as exc:
                    return WaitReason(WaitKind.NO_METADATA, f"{exc} (waiting for the actor to write it)")
            if min_rows > 0:
                # Bounded by min_rows matching rows; only used while waiting for data.
                (n,) = self._conn.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM transitions WHERE env_id = ? LIMIT ?)",
                    (self.env_id, min_rows),
                ).fetchone()
                return too_few_rows(n, min_rows, self.env_id, self.db_path)
            return None
        except (FileNotFoundError, sqlite3.DatabaseError) as exc:
            if isinstance(exc, FileNotFoundError):  # deleted between exists() and the stat
                return WaitReason(WaitKind.NO_DB, f"replay DB {self.db_path} does not exist yet")
            if is_transient(exc) or is_hot_journal(exc):
                return read_failure(exc, self.db_path)
            raise SchemaError(f"{self.db_path} cannot be read as a SQLite replay DB: {exc}") from exc

    def open(self) -> None:
        if self._conn is None:
            self._conn = self._connect()
        self.spec = read_game_spec(self._conn, self.env_id)
        self._check_schema()

    def _check_schema(self) -> None:
        assert self._conn is not None
        (version,) = self._conn.execute("PRAGMA schema_version").fetchone()
        if version == self._schema_version:
            return
        cols = {row[1] for row in self._conn.execute("PRAGMA table_info(transitions)")}
        if not cols:
            raise SchemaError(f"{self.db_path}: table transitions is missing")
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise SchemaError(
                f"{self.db_path}: table transitions has no column {', '.join(repr(c) for c in missing)} "
                f"(the replay contract requires it); columns found: {', '.join(sorted(cols))}"
            )
        self.has_model_step = MODEL_STEP_COLUMN in cols
        extra = f", {MODEL_STEP_COLUMN}" if self.has_model_step else ""
        self._select = (
            "SELECT rowid, observation, action, policy_probs, mcts_value, game_outcome, timestamp"
            f"{extra} FROM transitions"
        )
        self._schema_version = version

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def replaced(self) -> str | None:
        """Why the open connection no longer reads what is at db_path, or None: the file was
        deleted, another file took its place, or it was rewritten with fewer rows than we
        read. An open connection keeps reading the old file, which gets no more rows."""
        if self._conn is None:
            return None
        try:
            st = os.stat(self.db_path)
        except FileNotFoundError:
            return "the file was deleted"
        if (st.st_dev, st.st_ino) != self._file_id:
            return "another file took its place"
        self._check_schema()  # a dropped table is a SchemaError, not "no such table"
        if self.cursor and (top := self.max_rowid()) < self.cursor:
            return f"its rows end at rowid {top}, before rowid {self.cursor} already read"
        return None

    def reopen(self) -> None:
        """Forget the file read so far: the next probe() opens what is at db_path now and
        read_new() starts at its first row."""
        self.close()
        self.cursor = 0
        self.spec = None
        self._schema_version = None

    # --- reading ---------------------------------------------------------------------------
    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One short read transaction, ended whether or not its queries failed."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            self._check_schema()
            yield conn
        except BaseException:
            # A failed query (a damaged page) leaves its error on the transaction: COMMIT
            # would raise it again, ROLLBACK ends it (a read transaction has nothing to lose).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _fetch_after(
        self, after: int, limit: int, before: int | None = None
    ) -> tuple[list[tuple], int | None]:
        """Rows of env_id with after < rowid (< before), ascending, at most `limit`; plus
        MAX(rowid) of the same snapshot when the rows ran out before `limit` (and no bound)."""
        bound, args = (
            ("", (after, self.env_id, limit))
            if before is None
            else (" AND rowid < ?", (after, before, self.env_id, limit))
        )
        # One snapshot for the rows and MAX(rowid): when the chunk is short we have seen
        # everything up to MAX(rowid), including other games' rows after our last one.
        with self._snapshot() as conn:
            rows = conn.execute(
                f"{self._select} WHERE rowid > ?{bound} AND env_id = ? ORDER BY rowid LIMIT ?",
                args,
            ).fetchall()
            end = None
            if len(rows) < limit and before is None:
                (end,) = conn.execute("SELECT MAX(rowid) FROM transitions").fetchone()
        return rows, end

    def _fetch_upto(self, upto: int, limit: int, above: int = 0) -> list[tuple]:
        """Rows of env_id with above < rowid <= upto, newest first, at most `limit`."""
        with self._snapshot() as conn:
            return conn.execute(
                f"{self._select} WHERE rowid <= ? AND rowid > ? AND env_id = ? ORDER BY rowid DESC LIMIT ?",
                (upto, above, self.env_id, limit),
            ).fetchall()

    def read_new(self, limit: int | None = None) -> DecodedRows:
        """Usable rows of env_id after `cursor` (at most `limit` scanned rows of env_id)."""
        if self.spec is None:
            self.open()
        assert self.spec is not None
        limit = limit or self.chunk_rows
        unreadable = 0
        try:
            rows, end = self._fetch_after(self.cursor, limit)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            rows, unreadable, end = self._read_around_damage(limit, exc)
        if rows:
            self.cursor = max(self.cursor, rows[-1][0])
        if end is not None:
            self.cursor = max(self.cursor, end)
        out = decode_rows(rows, self.spec, self.has_model_step)
        if unreadable:
            out.bad[BAD_UNREADABLE] += unreadable
        out_bad = sum(out.bad.values())
        if out_bad:
            log.debug("skipped %d bad rows of %s: %s", out_bad, self.db_path, dict(out.bad))
        if out.newest_timestamp is not None:
            self.newest_timestamp = max(self.newest_timestamp or 0, out.newest_timestamp)
        if out.model_step is not None:
            self.model_step = out.model_step
        out.scanned = len(rows)
        return out

    # --- damaged files -----------------------------------------------------------------------
    # SQLite reports a damaged page only when a query touches it, so the damage is located by
    # asking which rowid ranges can be read: a range query fails from the first damaged rowid
    # on, and a read that starts after the damage succeeds again.
    def _read_around_damage(
        self, limit: int, exc: sqlite3.DatabaseError
    ) -> tuple[list[tuple], int, int | None]:
        """(rows, rowids skipped, new cursor or None) after a chunk query failed on a damaged
        page: the rows before the damage; once those are all read, the cursor moves past it."""
        start = self.cursor
        first_bad = self._first_damaged(start)
        if first_bad is None:
            raise exc  # not in the rows (the schema, the table's root): the caller waits
        # An empty range right before the damage could still seek into it.
        rows = self._fetch_after(start, limit, before=first_bad)[0] if first_bad > start + 1 else []
        if len(rows) == limit:
            return rows, 0, None
        resume = self._resume_point(first_bad)
        if resume is None:
            if rows:
                return rows, 0, None
            raise exc  # damaged up to the end as far as SQLite can tell: the caller waits
        # A range through the damage fails, but its edge rows may still read on their own.
        unreadable = resume - first_bad + 1
        for rowid in sorted({first_bad, resume}):
            edge = self._fetch_one(rowid)
            if edge is not None:
                rows += edge
                unreadable -= 1
        if unreadable:
            log.warning(
                "replay DB %s: rowids %d..%d cannot be read (the file is damaged there); "
                "skipped %d, counted as bad rows (unreadable)",
                self.db_path,
                first_bad,
                resume,
                unreadable,
            )
        return rows, unreadable, resume

    def _rows_unless_damaged(self, sql: str, args: tuple, keep: bool = True) -> list[tuple] | None:
        """The query's rows (with `keep` False only streamed through, as a range may be long,
        and [] returned), or None when it runs into a damaged page."""
        assert self._conn is not None
        try:
            cur = self._conn.execute(sql, args)
            if keep:
                return cur.fetchall()
            for _ in cur:
                pass
            return []
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):
                return None
            raise

    def _readable(self, sql: str, args: tuple) -> bool:
        return self._rows_unless_damaged(sql, args, keep=False) is not None

    def _fetch_one(self, rowid: int) -> list[tuple] | None:
        """The row (if of env_id) at `rowid`, [] if none, None if it cannot be read."""
        return self._rows_unless_damaged(
            f"{self._select} WHERE rowid = ? AND env_id = ?", (rowid, self.env_id)
        )

    def _first_damaged(self, start: int) -> int | None:
        """The smallest m > start such that rows in (start, m] cannot be read, or None."""

        def fails(m: int) -> bool:
            return not self._readable(f"{self._select} WHERE rowid > ? AND rowid <= ?", (start, m))

        return _first_true(fails, start, MAX_ROWID)

    def _resume_point(self, first_bad: int) -> int | None:
        """The smallest r >= first_bad such that rows after r can be read, or None when the
        end of the table cannot be read either."""
        found = self._rows_unless_damaged("SELECT MAX(rowid) FROM transitions", ())
        if found is None:
            return None
        top = int(found[0][0] or 0)
        if top < first_bad:
            return None

        def reads_after(r: int) -> bool:
            return self._readable(f"{self._select} WHERE rowid > ? ORDER BY rowid LIMIT 1", (r,))

        # Reading after MAX(rowid) touches only the path MAX(rowid) just read.
        return _first_true(reads_after, first_bad - 1, top)

    def read_newest(self, n_valid: int, upto_rowid: int) -> DecodedRows:
        """The newest `n_valid` usable rows of env_id with rowid <= upto_rowid, oldest first.

        Used to refill the window on resume; skipped rows are not reported again.
        """
        if self.spec is None:
            self.open()
        assert self._conn is not None and self.spec is not None
        parts: list[DecodedRows] = []
        have, upto = 0, upto_rowid
        while have < n_valid and upto is not None:
            rows, upto = self._newest_chunk(upto)
            if not rows:
                continue
            part = decode_rows(rows[::-1], self.spec, self.has_model_step)
            part = part.newest(n_valid - have)
            parts.append(part)
            have += len(part)
        out = DecodedRows.concat(parts[::-1], self.spec)
        out.bad = Counter()
        if out.newest_timestamp is not None:
            self.newest_timestamp = max(self.newest_timestamp or 0, out.newest_timestamp)
        if out.model_step is not None and self.model_step is None:
            self.model_step = out.model_step
        return out

    def _newest_chunk(self, upto: int) -> tuple[list[tuple], int | None]:
        """A chunk of rows at or below `upto`, newest first, and where the next chunk starts
        (None: no rows below). Steps over a damaged range as read_new() does, downwards."""
        try:
            rows = self._fetch_upto(upto, self.chunk_rows)
            return rows, (rows[-1][0] - 1 if rows else None)
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
            error = exc
        damage = self._damage_below(upto)
        if damage is None:
            log.warning(
                "replay DB %s: rows at or below rowid %d cannot be read (%s)", self.db_path, upto, error
            )
            return [], None
        top_bad, below = damage
        rows = self._fetch_upto(upto, self.chunk_rows, above=top_bad) if top_bad < upto else []
        if len(rows) == self.chunk_rows:
            return rows, rows[-1][0] - 1
        log.warning(
            "replay DB %s: rowids below %d cannot be read (the file is damaged there); the window "
            "refill goes on below rowid %s",
            self.db_path,
            top_bad + 1,
            below,
        )
        return rows, below

    def _damage_below(self, upto: int) -> tuple[int, int | None] | None:
        """(the highest damaged rowid <= upto, the highest rowid below it that rows can be
        read down from, or None), or None when no damaged rowid is found."""

        def fails(d: int) -> bool:
            return not self._readable(f"{self._select} WHERE rowid <= ? AND rowid > ?", (upto, upto - d))

        d = _first_true(fails, 0, upto)
        if d is None:
            return None
        top_bad = upto - d + 1

        def reads_down_from(e: int) -> bool:
            return self._readable(
                f"{self._select} WHERE rowid <= ? ORDER BY rowid DESC LIMIT 1", (top_bad - e,)
            )

        e = _first_true(reads_down_from, 0, top_bad)
        return top_bad, (None if e is None else top_bad - e)

    def count_rows(self, upto_rowid: int | None = None) -> int:
        """Rows of env_id (up to a rowid). A table scan: call it once at start, not per step."""
        if self._conn is None:
            self._conn = self._connect()
        sql, args = "SELECT COUNT(*) FROM transitions WHERE env_id = ?", [self.env_id]
        if upto_rowid is not None:
            sql += " AND rowid <= ?"
            args.append(upto_rowid)
        return int(self._conn.execute(sql, args).fetchone()[0])

    def max_rowid(self) -> int:
        if self._conn is None:
            self._conn = self._connect()
        (m,) = self._conn.execute("SELECT MAX(rowid) FROM transitions").fetchone()
        return int(m or 0)

    def __enter__(self) -> ReplayReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
