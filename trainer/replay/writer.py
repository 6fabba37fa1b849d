"""Writing whole games into the replay DB in the contract's format.

Used by the Python actor, the test fixtures and the benchmarks, so there is exactly one
place that turns a played game into rows (outcome backfill, blobs, one transaction).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.games import Game, GameState
from trainer.replay.codec import encode_action, encode_f32
from trainer.replay.reader import is_transient
from trainer.replay.schema import (
    INSERT_TRANSITION,
    MODEL_STEP_COLUMN,
    create_schema,
    upsert_game_metadata,
)

log = logging.getLogger(__name__)


class ReplayWriteError(Exception):
    """The replay DB cannot be written: not a SQLite file, read-only, disk full. The message
    names the DB and SQLite's own reason; retrying will not help."""


@dataclass
class PlyRecord:
    state: GameState  # before the move
    action: int
    policy: np.ndarray | None  # MCTS visit distribution; None = uniform over legal moves
    mcts_value: float = 0.0


def outcome_for_ply(k: int, num_plies: int, last_reward: float) -> float:
    """Contract backfill: ply k gets z if (T-1-k) is even, else -z."""
    return last_reward if (num_plies - 1 - k) % 2 == 0 else -last_reward


def game_rows(
    game: Game,
    episode_id: str,
    plies: list[PlyRecord],
    timestamp: int | None = None,
    model_step: int | None = None,
) -> list[tuple]:
    """Rows of one finished game, in INSERT_TRANSITION's column order."""
    if not plies:
        raise ValueError("a game needs at least one ply")
    ts = int(time.time()) if timestamp is None else timestamp
    spec = game.spec
    rows = []
    states = [p.state for p in plies] + [game.apply(plies[-1].state, plies[-1].action)]
    if not states[-1].is_terminal:
        raise ValueError(f"game {episode_id} is not finished; only whole games are written")
    last_reward = game.reward_for_mover(states[-2], states[-1])
    for k, ply in enumerate(plies):
        before, after = states[k], states[k + 1]
        policy = ply.policy
        if policy is None:
            legal = game.legal_mask(before).astype(np.float32)
            policy = legal / legal.sum()
        rows.append(
            (
                f"{episode_id}-step-{k}",
                spec.env_id,
                episode_id,
                k,
                game.state_blob(before),
                encode_action(ply.action),
                game.state_blob(after),
                encode_f32(game.encode(before)),
                encode_f32(game.encode(after)),
                game.reward_for_mover(before, after),
                int(after.is_terminal),
                ts,
                encode_f32(policy),
                float(ply.mcts_value),
                outcome_for_ply(k, len(plies), last_reward),
            )
            + ((model_step,) if model_step is not None else ())
        )
    return rows


class ReplayWriter:
    """One connection per process; WAL + busy timeout + retry so many writers coexist."""

    def __init__(
        self,
        db_path: str | Path,
        game: Game,
        with_model_step: bool = True,
        busy_timeout_s: float = 5.0,
        max_retries: int = 20,
        journal_mode: str = "wal",
    ):
        # WAL lets readers and writers overlap; "delete" (SQLite's default rollback
        # journal) is what the existing Rust actor uses, kept for compatibility tests.
        self.journal_mode = journal_mode
        self.game = game
        self.with_model_step = with_model_step
        self.max_retries = max_retries
        self.db_path = Path(db_path)
        with self._errors_named():
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(db_path), timeout=busy_timeout_s, isolation_level=None)
            try:
                self._retry(self._init_db)
            except BaseException:
                self.conn.close()
                raise
        extra = f", {MODEL_STEP_COLUMN}" if with_model_step else ""
        self._sql_with_step = INSERT_TRANSITION.format(extra=extra, extra_q=", ?" if extra else "")
        self._sql_plain = INSERT_TRANSITION.format(extra="", extra_q="")

    @contextmanager
    def _errors_named(self) -> Iterator[None]:
        """Turns a lasting SQLite or OS failure into one ReplayWriteError naming the DB."""
        try:
            yield
        except sqlite3.Error as exc:
            raise ReplayWriteError(f"cannot write the replay DB {self.db_path}: {exc}") from exc
        except OSError as exc:
            raise ReplayWriteError(
                f"cannot write the replay DB {self.db_path}: {exc.strerror or exc}"
            ) from exc

    def _in_transaction(self, work: Callable[[], None]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            work()
            self.conn.execute("COMMIT")
        except BaseException:
            # On a full disk or an I/O error SQLite has already rolled back by itself; a
            # second ROLLBACK would fail and its error would replace the real cause.
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    def _init_db(self) -> None:
        self.conn.execute(f"PRAGMA journal_mode={self.journal_mode}")

        def schema() -> None:
            create_schema(self.conn, with_model_step=self.with_model_step)
            upsert_game_metadata(self.conn, self.game.spec)

        self._in_transaction(schema)

    def _retry(self, fn):
        # The busy timeout covers most contention; this covers the rest (e.g. a WAL
        # checkpoint or schema change racing us) without ever losing the game.
        for attempt in range(self.max_retries):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not is_transient(exc):
                    raise
                delay = min(1.0, 0.01 * 2**attempt) * (0.5 + random.random())
                log.debug("replay DB busy (%s); retrying in %.2fs", exc, delay)
                time.sleep(delay)
        return fn()

    def write_game(self, episode_id: str, plies: list[PlyRecord], model_step: int | None = None) -> int:
        rows = game_rows(
            self.game, episode_id, plies, model_step=model_step if self.with_model_step else None
        )
        sql = self._sql_with_step if (self.with_model_step and model_step is not None) else self._sql_plain

        with self._errors_named():
            self._retry(lambda: self._in_transaction(lambda: self.conn.executemany(sql, rows)))
        return len(rows)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
