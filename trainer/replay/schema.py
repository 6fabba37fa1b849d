"""SQL of the replay contract, shared by the actor (writer) and the trainer (reader).

Keep this the only place the schema is spelled out.
"""

from __future__ import annotations

import sqlite3

from trainer.games import GameSpec, get_game

CREATE_TRANSITIONS = """
CREATE TABLE IF NOT EXISTS transitions (
    id TEXT PRIMARY KEY,
    env_id TEXT NOT NULL,
    episode_id TEXT NOT NULL,
    step_number INTEGER NOT NULL,
    state BLOB NOT NULL,
    action BLOB NOT NULL,
    next_state BLOB NOT NULL,
    observation BLOB NOT NULL,
    next_observation BLOB NOT NULL,
    reward REAL NOT NULL,
    done INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    policy_probs BLOB,
    mcts_value REAL DEFAULT 0.0,
    game_outcome REAL,
    created_at DATETIME DEFAULT CURRENT_TIMESTAMP
)"""

CREATE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS idx_transitions_timestamp ON transitions(timestamp)",
    "CREATE INDEX IF NOT EXISTS idx_transitions_episode ON transitions(episode_id)",
)

CREATE_GAME_METADATA = """
CREATE TABLE IF NOT EXISTS game_metadata (
    env_id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    board_width INTEGER NOT NULL,
    board_height INTEGER NOT NULL,
    num_actions INTEGER NOT NULL,
    obs_size INTEGER NOT NULL,
    legal_mask_offset INTEGER NOT NULL,
    player_count INTEGER NOT NULL,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP
)"""

# Optional column our actor adds (the contract allows nullable extras).
MODEL_STEP_COLUMN = "model_step"

# The columns a writer sets, in the order of `writer.game_rows`' tuples.
TRANSITION_COLUMNS = (
    "id",
    "env_id",
    "episode_id",
    "step_number",
    "state",
    "action",
    "next_state",
    "observation",
    "next_observation",
    "reward",
    "done",
    "timestamp",
    "policy_probs",
    "mcts_value",
    "game_outcome",
)

INSERT_TRANSITION = (
    f"INSERT OR REPLACE INTO transitions ({', '.join(TRANSITION_COLUMNS)}{{extra}}) "
    f"VALUES ({', '.join(['?'] * len(TRANSITION_COLUMNS))}{{extra_q}})"
)

GAME_METADATA_COLUMNS = (
    "env_id",
    "display_name",
    "board_width",
    "board_height",
    "num_actions",
    "obs_size",
    "legal_mask_offset",
    "player_count",
)


class SchemaError(RuntimeError):
    """The replay DB lacks something the contract requires."""


class MissingMetadataError(SchemaError):
    """No game_metadata row for an env_id the trainer does not know: the actor has not written it yet."""


def create_schema(conn: sqlite3.Connection, with_model_step: bool = False) -> None:
    conn.execute(CREATE_TRANSITIONS)
    for sql in CREATE_INDEXES:
        conn.execute(sql)
    conn.execute(CREATE_GAME_METADATA)
    if with_model_step:
        cols = {row[1] for row in conn.execute("PRAGMA table_info(transitions)")}
        if MODEL_STEP_COLUMN not in cols:
            conn.execute(f"ALTER TABLE transitions ADD COLUMN {MODEL_STEP_COLUMN} INTEGER")


def upsert_game_metadata(conn: sqlite3.Connection, spec: GameSpec) -> None:
    conn.execute(
        f"INSERT INTO game_metadata ({', '.join(GAME_METADATA_COLUMNS)}, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP) "
        "ON CONFLICT(env_id) DO UPDATE SET display_name=excluded.display_name, "
        "board_width=excluded.board_width, board_height=excluded.board_height, "
        "num_actions=excluded.num_actions, obs_size=excluded.obs_size, "
        "legal_mask_offset=excluded.legal_mask_offset, player_count=excluded.player_count, "
        "updated_at=CURRENT_TIMESTAMP",
        tuple(getattr(spec, c) for c in GAME_METADATA_COLUMNS),
    )


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def read_game_spec(conn: sqlite3.Connection, env_id: str) -> GameSpec:
    """Shapes from `game_metadata`; falls back to a known game's spec when the row is missing."""
    row = None
    if "game_metadata" in table_names(conn):
        row = conn.execute(
            f"SELECT {', '.join(GAME_METADATA_COLUMNS[1:])} FROM game_metadata WHERE env_id = ?",
            (env_id,),
        ).fetchone()
    return spec_from_metadata_row(env_id, row)


def spec_from_metadata_row(env_id: str, row: tuple | None) -> GameSpec:
    """A GameSpec from `game_metadata`'s columns after env_id (None: no row), checked."""
    if row is None:
        try:
            return get_game(env_id).spec
        except ValueError:
            raise MissingMetadataError(
                f"game_metadata has no row for env_id {env_id!r} and it is not a game the "
                "trainer knows; the actor must upsert its game_metadata row"
            ) from None
    spec = GameSpec(env_id, *row)
    if spec.legal_slice.stop > spec.obs_size or spec.num_actions <= 0:
        raise SchemaError(f"game_metadata row for {env_id!r} is inconsistent: {spec}")
    return spec
