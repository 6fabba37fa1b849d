"""Build replay DBs of real games for tests and benchmarks.

    write_random_games(db, "connect4", 100, seed=1)                 # WAL, like our actor
    write_random_games(db, "tictactoe", 50, seed=2, journal="delete")  # SQLite defaults, like the Rust actor
    write_games_by_player(db, "tictactoe", 20, perfect_player, seed=3)

Rows go through `trainer.replay.writer` (game_rows / ReplayWriter), so they are exactly what
an actor writes: outcome backfill, blobs, one game per transaction unless `games_per_commit`
asks for bulk inserts (only to build big benchmark DBs quickly).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from trainer.games import Game, GameState, get_game
from trainer.replay.schema import INSERT_TRANSITION, MODEL_STEP_COLUMN
from trainer.replay.writer import PlyRecord, ReplayWriter, game_rows

# choose_move(game, state, rng) -> (action, policy or None for uniform over legal moves)
ChooseMove = Callable[[Game, GameState, np.random.Generator], "tuple[int, np.ndarray | None]"]
Journal = Literal["wal", "delete"]


def random_move(game: Game, state: GameState, rng: np.random.Generator) -> tuple[int, None]:
    """What an actor without a model does: uniform move, uniform policy over legal moves."""
    return int(rng.choice(game.legal_actions(state))), None


def onehot_random_move(game: Game, state: GameState, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """A uniform move whose policy target is one-hot: tests use it to mark rows."""
    action = int(rng.choice(game.legal_actions(state)))
    policy = np.zeros(game.spec.num_actions, dtype=np.float32)
    policy[action] = 1.0
    return action, policy


def play_game(game: Game, choose_move: ChooseMove, rng: np.random.Generator) -> list[PlyRecord]:
    state, plies = game.initial_state(), []
    while not state.is_terminal:
        action, policy = choose_move(game, state, rng)
        plies.append(PlyRecord(state=state, action=int(action), policy=policy))
        state = game.apply(state, int(action))
    return plies


def open_writer(
    db_path: str | Path, env_id: str, with_model_step: bool = False, journal: Journal = "wal"
) -> ReplayWriter:
    return ReplayWriter(db_path, get_game(env_id), with_model_step=with_model_step, journal_mode=journal)


def write_games_by_player(
    db_path: str | Path,
    env_id: str,
    n_games: int,
    choose_move: ChooseMove,
    seed: int = 0,
    with_model_step: bool = False,
    journal: Journal = "wal",
    model_step: int | None = None,
    games_per_commit: int = 1,
    episode_prefix: str = "test",
) -> int:
    """Play `n_games` with `choose_move` and insert them; returns the number of rows written."""
    game = get_game(env_id)
    rng = np.random.default_rng(seed)
    # Unique per call, so two calls with the same seed add games instead of replacing them.
    run_tag = f"{episode_prefix}-{seed}-{os.getpid()}-{os.urandom(3).hex()}"
    step = model_step if with_model_step else None
    rows_written = 0
    with open_writer(db_path, env_id, with_model_step, journal) as writer:
        if games_per_commit <= 1:
            for i in range(n_games):
                rows_written += writer.write_game(
                    f"{run_tag}-ep-{i}-{int(time.time())}", play_game(game, choose_move, rng), step
                )
            return rows_written
        extra = f", {MODEL_STEP_COLUMN}" if step is not None else ""
        sql = INSERT_TRANSITION.format(extra=extra, extra_q=", ?" if extra else "")
        for start in range(0, n_games, games_per_commit):
            rows: list[tuple] = []
            for i in range(start, min(n_games, start + games_per_commit)):
                plies = play_game(game, choose_move, rng)
                rows += game_rows(game, f"{run_tag}-ep-{i}-{int(time.time())}", plies, model_step=step)
            writer._retry(lambda rows=rows: _insert_bulk(writer.conn, sql, rows))
            rows_written += len(rows)
    return rows_written


def _insert_bulk(conn: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def write_random_games(
    db_path: str | Path,
    env_id: str,
    n_games: int,
    seed: int = 0,
    with_model_step: bool = False,
    journal: Journal = "wal",
    model_step: int | None = None,
    onehot_policy: bool = False,
    games_per_commit: int = 1,
    episode_prefix: str = "random",
) -> int:
    """`n_games` uniformly random games (uniform policy targets, or one-hot ones as a marker)."""
    if with_model_step and model_step is None:
        model_step = 0
    return write_games_by_player(
        db_path,
        env_id,
        n_games,
        onehot_random_move if onehot_policy else random_move,
        seed=seed,
        with_model_step=with_model_step,
        journal=journal,
        model_step=model_step,
        games_per_commit=games_per_commit,
        episode_prefix=episode_prefix,
    )


def write_games_slowly(
    db_path: str | Path,
    env_id: str,
    n_games: int,
    seed: int = 0,
    journal: Journal = "wal",
    onehot_policy: bool = True,
    pause_s: float = 0.005,
) -> int:
    """An actor in miniature for concurrency tests: one game per transaction, a pause between
    games, and no retry on "database is locked" beyond SQLite's 5 s busy timeout (what the
    contract promises a writer), so a reader that holds a lock too long makes it fail."""
    game = get_game(env_id)
    rng = np.random.default_rng(seed)
    choose = onehot_random_move if onehot_policy else random_move
    rows = 0
    with ReplayWriter(
        db_path, game, with_model_step=False, busy_timeout_s=5.0, max_retries=0, journal_mode=journal
    ) as writer:
        for i in range(n_games):
            rows += writer.write_game(f"slow-{seed}-{os.getpid()}-ep-{i}", play_game(game, choose, rng))
            time.sleep(pause_s)
    return rows


def journal_mode(db_path: str | Path) -> str:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()
