"""The PostgreSQL replay schema: the Rust actor's tables, exactly, plus our nullable extras.

The Rust actor names its columns in every statement, so the columns we add cannot break it:
`model_step` (nullable, which model played the row) and `seq`, the key the trainer tails by.

`seq` is filled by `replay_next_seq()`, which takes the transaction's id before it draws the
next number. The reader relies on that order (see `reader.py`): a row's seq is never drawn by
a transaction that had no id yet, so "every transaction older than snapshot S has ended"
also means "every seq drawn before S is committed or never will be". A plain identity column
draws its number first, and for a moment such a transaction would be invisible to that test.

Cost of adding `seq` to an existing table: a column with a volatile default makes
PostgreSQL rewrite the whole table (and build the index) under an ACCESS EXCLUSIVE lock, so
writers wait for as long as that takes. The reader does it by itself only for tables up to
`AUTO_MIGRATE_MAX_BYTES`; a bigger one is migrated once, at a quiet moment, with
`python -m trainer replay migrate --db URL`.
"""

from __future__ import annotations

import psycopg

from trainer.games import GameSpec
from trainer.replay.schema import (
    GAME_METADATA_COLUMNS,
    MODEL_STEP_COLUMN,
    SchemaError,
    spec_from_metadata_row,
)

SEQ_COLUMN = "seq"
AUTO_MIGRATE_MAX_BYTES = 64 * 1024 * 1024
MIGRATE_HINT = "python -m trainer replay migrate --db URL"
# Serialises our schema changes across processes (several actors starting at once would
# otherwise race on CREATE TABLE IF NOT EXISTS); any fixed number unique to this program.
SCHEMA_LOCK_KEY = 0x5E1F_7A1E

# What the Rust actor creates, column for column.
RUST_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS transitions (
        id TEXT PRIMARY KEY,
        env_id TEXT NOT NULL,
        episode_id TEXT NOT NULL,
        step_number INTEGER NOT NULL,
        state BYTEA NOT NULL,
        action BYTEA NOT NULL,
        next_state BYTEA NOT NULL,
        observation BYTEA NOT NULL,
        next_observation BYTEA NOT NULL,
        reward REAL NOT NULL,
        done BOOLEAN NOT NULL,
        timestamp BIGINT NOT NULL,
        policy_probs BYTEA,
        mcts_value REAL DEFAULT 0.0,
        game_outcome REAL,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    "CREATE INDEX IF NOT EXISTS idx_transitions_timestamp ON transitions(timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_transitions_episode ON transitions(episode_id)",
    "CREATE INDEX IF NOT EXISTS idx_transitions_env_id ON transitions(env_id)",
    """CREATE TABLE IF NOT EXISTS game_metadata (
        env_id TEXT PRIMARY KEY,
        display_name TEXT,
        board_width INTEGER NOT NULL,
        board_height INTEGER NOT NULL,
        num_actions INTEGER NOT NULL,
        obs_size INTEGER NOT NULL,
        legal_mask_offset INTEGER NOT NULL,
        player_count INTEGER NOT NULL,
        updated_at TIMESTAMP
    )""",
)

ADD_MODEL_STEP = f"ALTER TABLE transitions ADD COLUMN IF NOT EXISTS {MODEL_STEP_COLUMN} BIGINT"

ADD_SEQ = (
    "CREATE SEQUENCE IF NOT EXISTS replay_transitions_seq AS BIGINT CACHE 1",
    """CREATE OR REPLACE FUNCTION replay_next_seq() RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM pg_current_xact_id();
        RETURN nextval('replay_transitions_seq');
    END $$""",
    f"ALTER TABLE transitions ADD COLUMN IF NOT EXISTS {SEQ_COLUMN} BIGINT NOT NULL DEFAULT replay_next_seq()",
    f"ALTER SEQUENCE replay_transitions_seq OWNED BY transitions.{SEQ_COLUMN}",
    f"CREATE UNIQUE INDEX IF NOT EXISTS idx_transitions_seq ON transitions({SEQ_COLUMN})",
)

UPSERT_METADATA = (
    f"INSERT INTO game_metadata ({', '.join(GAME_METADATA_COLUMNS)}, updated_at) "
    f"VALUES ({', '.join(['%s'] * len(GAME_METADATA_COLUMNS))}, CURRENT_TIMESTAMP) "
    "ON CONFLICT (env_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in GAME_METADATA_COLUMNS[1:])
    + ", updated_at = CURRENT_TIMESTAMP"
)


def table_names(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchall()
    return {r[0] for r in rows}


def column_names(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall()
    return {r[0] for r in rows}


def create_schema(conn: psycopg.Connection, with_model_step: bool = True) -> None:
    """The Rust actor's tables (if missing) plus `seq` (and `model_step`); for our actor and tests.

    Does nothing when all is there: even `... IF NOT EXISTS` on an index or a column waits
    for a table lock that an open writer transaction holds, and queues every writer behind it.
    """
    wanted = {SEQ_COLUMN, MODEL_STEP_COLUMN} if with_model_step else {SEQ_COLUMN}
    if {"transitions", "game_metadata"} <= table_names(conn) and wanted <= column_names(conn, "transitions"):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        for sql in RUST_SCHEMA:
            conn.execute(sql)
        if with_model_step:
            conn.execute(ADD_MODEL_STEP)
    add_seq_column(conn, max_bytes=None)


def add_seq_column(conn: psycopg.Connection, max_bytes: int | None = AUTO_MIGRATE_MAX_BYTES) -> bool:
    """Add `seq` to transitions unless it is there; True if it was added.

    Raises SchemaError for a table over `max_bytes` (None: any size): the rewrite would
    block the writers, so it is left to an explicit migrate.
    """
    if SEQ_COLUMN in column_names(conn, "transitions"):
        return False
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        if SEQ_COLUMN in column_names(conn, "transitions"):
            return False
        (size,) = conn.execute("SELECT pg_table_size('transitions')").fetchone()
        if max_bytes is not None and size > max_bytes:
            raise SchemaError(
                f"table transitions ({size / 2**20:.0f} MiB) has no {SEQ_COLUMN!r} column, which the trainer "
                f"tails new rows by; adding it rewrites the table while writers wait, so run `{MIGRATE_HINT}` "
                "once at a quiet moment"
            )
        for sql in ADD_SEQ:
            conn.execute(sql)
    return True


def upsert_game_metadata(conn: psycopg.Connection, spec: GameSpec) -> None:
    conn.execute(UPSERT_METADATA, tuple(getattr(spec, c) for c in GAME_METADATA_COLUMNS))


def read_game_spec(conn: psycopg.Connection, env_id: str) -> GameSpec:
    """Shapes from `game_metadata`; a known game's spec when the row is missing."""
    row = None
    if "game_metadata" in table_names(conn):
        row = conn.execute(
            f"SELECT {', '.join(GAME_METADATA_COLUMNS[1:])} FROM game_metadata WHERE env_id = %s", (env_id,)
        ).fetchone()
    return spec_from_metadata_row(env_id, row)
