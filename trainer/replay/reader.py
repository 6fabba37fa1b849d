"""The trainer's read side of the replay DB (contract section 1, reader rules).

Actors keep writing while we read, some of them with SQLite's rollback journal, where a
reader's shared lock blocks a writer's commit. So every query here is short: new rows are
fetched in chunks by `rowid > cursor ORDER BY rowid LIMIT n` (an index range on the rowid,
never a table scan), the rows are copied out with `fetchall()` and the read transaction ends
before any decoding starts. The connection is read-only (`mode=ro`): we cannot block a
writer by taking a write lock, and we cannot create or alter the file.

Decoding is vectorised per chunk (one `b"".join` + `np.frombuffer` per column), because a
restart may load a few hundred thousand rows before the first step.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.games import GameSpec
from trainer.replay.codec import F32, U32
from trainer.replay.schema import MODEL_STEP_COLUMN, MissingMetadataError, SchemaError, read_game_spec, table_names
from trainer.sources.wait_reason import WaitKind, WaitReason

log = logging.getLogger(__name__)

# Columns the reader needs; the other contract columns (state, next_state, ...) are unused.
REQUIRED_COLUMNS = ("env_id", "observation", "action", "policy_probs", "mcts_value", "game_outcome", "timestamp")

# Why a row was skipped; one reason per row, the first that applies in this order.
BAD_OBS_LENGTH = "obs_length"  # observation blob NULL, not a blob, or the wrong length
BAD_ACTION = "bad_action"  # action blob not 4 bytes, or out of range
BAD_VALUE_NULL = "value_null"  # game_outcome and mcts_value both NULL
BAD_NONFINITE = "nonfinite"  # NaN/inf in observation, policy or value
BAD_ILLEGAL_ACTION = "illegal_action"  # the action is not legal in the row's own legal mask
BAD_REASONS = (BAD_OBS_LENGTH, BAD_ACTION, BAD_VALUE_NULL, BAD_NONFINITE, BAD_ILLEGAL_ACTION)

DEFAULT_CHUNK_ROWS = 4096


def is_transient(exc: BaseException) -> bool:
    """A lock/busy error that goes away by itself (a writer is committing)."""
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


@dataclass
class DecodedRows:
    """Usable rows of one chunk, in rowid order, plus what was skipped."""

    rowids: np.ndarray  # int64 [n]
    obs: np.ndarray  # float32 [n, obs_size]
    policy: np.ndarray  # float32 [n, num_actions], sums to 1 over legal moves, 0 elsewhere
    value: np.ndarray  # float32 [n], game outcome from the mover's view
    bad: Counter = field(default_factory=Counter)  # reason -> rows skipped
    policy_onehot: int = 0  # usable rows whose policy_probs was NULL/wrong/empty: one-hot of action
    newest_timestamp: int | None = None
    model_step: int | None = None  # newest non-NULL model_step of the chunk
    scanned: int = 0  # rows of env_id read, usable or not

    def __len__(self) -> int:
        return int(self.rowids.shape[0])

    @staticmethod
    def empty(spec: GameSpec) -> "DecodedRows":
        return DecodedRows(
            np.zeros(0, np.int64), np.zeros((0, spec.obs_size), np.float32),
            np.zeros((0, spec.num_actions), np.float32), np.zeros(0, np.float32),
        )

    @staticmethod
    def concat(parts: list["DecodedRows"], spec: GameSpec) -> "DecodedRows":
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
            bad, sum(p.policy_onehot for p in parts),
            max(stamps) if stamps else None, steps[-1] if steps else None,
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
    value_null = np.array([o is None and m is None for o, m in zip(outcome, mcts)])

    pol_finite = np.isfinite(policy).all(axis=1)
    finite = np.isfinite(obs).all(axis=1) & np.isfinite(value) & (pol_finite | ~pol_given)
    legal = spec.legal_masks(obs)
    action_legal = legal[np.arange(n), actions]

    reasons = (
        (BAD_OBS_LENGTH, ~obs_ok),
        (BAD_ACTION, ~act_ok),
        (BAD_VALUE_NULL, value_null),
        (BAD_NONFINITE, ~finite),
        (BAD_ILLEGAL_ACTION, ~action_legal),
    )
    good = np.ones(n, dtype=bool)
    bad: Counter = Counter()
    for reason, mask in reasons:
        hit = good & mask
        if hit.any():
            bad[reason] += int(hit.sum())
            good &= ~hit

    # Policy target: mass on legal moves only, renormalised; one-hot of the action where the
    # row has no usable distribution (NULL, wrong length, or no mass on a legal move).
    use_given = (pol_given & pol_finite)[:, None]
    policy = np.where(legal & use_given, np.maximum(policy, 0.0), 0.0).astype(np.float32)
    mass = policy.sum(axis=1)
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
        rowids[sel], np.ascontiguousarray(obs[sel], dtype=np.float32), policy[sel],
        value[sel].astype(np.float32), bad, int((onehot & good).sum()), newest_ts, model_step, n,
    )


def sqlite_ro_uri(path: str | Path) -> str:
    # as_uri() percent-encodes '?', '#' and '%' in the path, which a raw "file:" string would not.
    return Path(path).resolve().as_uri() + "?mode=ro"


class ReplayReader:
    """Reads one env_id's rows of a replay DB, oldest first, in short chunks.

    `cursor` is the highest rowid already read (of any env_id); `read_new()` returns the
    usable rows after it and advances it. Open lazily: `probe()` says why it cannot be read
    yet, `open()` connects, checks the columns and reads the game's shapes.
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
        self.newest_timestamp: int | None = None
        self.model_step: int | None = None
        self.spec: GameSpec | None = None
        self.has_model_step = False
        self._conn: sqlite3.Connection | None = None
        self._schema_version: int | None = None
        self._select = ""

    # --- connection ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transaction stays open between our queries.
        return sqlite3.connect(
            sqlite_ro_uri(self.db_path), uri=True, timeout=self.busy_timeout_s,
            isolation_level=None, check_same_thread=False,
        )

    def probe(self, min_rows: int = 0) -> WaitReason | None:
        """Why the DB cannot be trained from yet, or None when it can (opens it if needed).

        Raises SchemaError for problems that waiting will not fix (a missing column, a file
        that is not SQLite).
        """
        if not self.db_path.exists():
            return WaitReason(WaitKind.NO_DB, f"replay DB {self.db_path} does not exist yet")
        try:
            if self._conn is None:
                self._conn = self._connect()
            try:
                tables = table_names(self._conn)
            except sqlite3.DatabaseError as exc:
                if is_transient(exc):
                    raise
                raise SchemaError(f"{self.db_path} cannot be read as a SQLite replay DB: {exc}") from exc
            if "transitions" not in tables:
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
                if n < min_rows:
                    return WaitReason(
                        WaitKind.TOO_FEW_ROWS,
                        f"{n} rows of env_id {self.env_id!r} in {self.db_path}, need {min_rows} (--min-rows)",
                    )
            return None
        except sqlite3.OperationalError as exc:
            if is_transient(exc):
                return WaitReason(WaitKind.DB_BUSY, f"replay DB {self.db_path} is busy ({exc})")
            raise

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

    # --- reading ---------------------------------------------------------------------------
    def read_new(self, limit: int | None = None) -> DecodedRows:
        """Usable rows of env_id after `cursor` (at most `limit` scanned rows of env_id)."""
        if self.spec is None:
            self.open()
        conn, limit = self._conn, limit or self.chunk_rows
        assert conn is not None and self.spec is not None
        conn.execute("BEGIN")
        try:
            # One snapshot for the rows and MAX(rowid): when the chunk is short we have seen
            # everything up to MAX(rowid), including other games' rows after our last one.
            self._check_schema()
            rows = conn.execute(
                f"{self._select} WHERE rowid > ? AND env_id = ? ORDER BY rowid LIMIT ?",
                (self.cursor, self.env_id, limit),
            ).fetchall()
            end = None
            if len(rows) < limit:
                (end,) = conn.execute("SELECT MAX(rowid) FROM transitions").fetchone()
        finally:
            conn.execute("COMMIT")
        if rows:
            self.cursor = max(self.cursor, rows[-1][0])
        if end is not None:
            self.cursor = max(self.cursor, end)
        out = decode_rows(rows, self.spec, self.has_model_step)
        out_bad = sum(out.bad.values())
        if out_bad:
            log.debug("skipped %d bad rows of %s: %s", out_bad, self.db_path, dict(out.bad))
        if out.newest_timestamp is not None:
            self.newest_timestamp = max(self.newest_timestamp or 0, out.newest_timestamp)
        if out.model_step is not None:
            self.model_step = out.model_step
        out.scanned = len(rows)
        return out

    def read_newest(self, n_valid: int, upto_rowid: int) -> DecodedRows:
        """The newest `n_valid` usable rows of env_id with rowid <= upto_rowid, oldest first.

        Used to refill the window on resume; skipped rows are not reported again.
        """
        if self.spec is None:
            self.open()
        assert self._conn is not None and self.spec is not None
        parts: list[DecodedRows] = []
        have, upto = 0, upto_rowid
        while have < n_valid:
            self._conn.execute("BEGIN")
            try:
                self._check_schema()
                rows = self._conn.execute(
                    f"{self._select} WHERE rowid <= ? AND env_id = ? ORDER BY rowid DESC LIMIT ?",
                    (upto, self.env_id, self.chunk_rows),
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
            if not rows:
                break
            upto = rows[-1][0] - 1
            part = decode_rows(rows[::-1], self.spec, self.has_model_step)
            if len(part) > n_valid - have:
                keep = len(part) - (n_valid - have)
                part = DecodedRows(part.rowids[keep:], part.obs[keep:], part.policy[keep:], part.value[keep:],
                                   newest_timestamp=part.newest_timestamp, model_step=part.model_step)
            parts.append(part)
            have += len(part)
        out = DecodedRows.concat(parts[::-1], self.spec)
        out.bad = Counter()
        if out.newest_timestamp is not None:
            self.newest_timestamp = max(self.newest_timestamp or 0, out.newest_timestamp)
        if out.model_step is not None and self.model_step is None:
            self.model_step = out.model_step
        return out

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

    def __enter__(self) -> "ReplayReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
