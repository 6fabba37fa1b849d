"""Writing whole games into a PostgreSQL replay, the way the Rust actor does.

One multi-row `INSERT ... ON CONFLICT (id) DO UPDATE` per game: one statement, so one
transaction, and idempotent by row id. That is what makes a lost connection safe: when the
server goes away mid-write we cannot know whether the game committed, so it is sent again
after reconnecting, and a second copy only rewrites the same outcome and value.
"""

from __future__ import annotations

import logging
import time

import psycopg

from trainer.games import Game
from trainer.replay.postgres.connection import (
    ConnectionLost,
    connect,
    is_connection_error,
    redact_url,
)
from trainer.replay.postgres.schema import create_schema, upsert_game_metadata
from trainer.replay.schema import MODEL_STEP_COLUMN, TRANSITION_COLUMNS
from trainer.replay.writer import PlyRecord, game_rows

log = logging.getLogger(__name__)

DONE_INDEX = TRANSITION_COLUMNS.index("done")
ON_CONFLICT = (
    " ON CONFLICT (id) DO UPDATE SET game_outcome = EXCLUDED.game_outcome, mcts_value = EXCLUDED.mcts_value"
)


def insert_game_sql(n_rows: int, with_model_step: bool) -> str:
    """The Rust actor's statement for a game of `n_rows` plies (plus our `model_step`)."""
    cols = TRANSITION_COLUMNS + ((MODEL_STEP_COLUMN,) if with_model_step else ())
    one = "(" + ", ".join(["%s"] * len(cols)) + ")"
    return f"INSERT INTO transitions ({', '.join(cols)}) VALUES {', '.join([one] * n_rows)}{ON_CONFLICT}"


def pg_row(row: tuple) -> tuple:
    """A `game_rows` tuple with `done` as the BOOLEAN the PostgreSQL schema has."""
    return row[:DONE_INDEX] + (bool(row[DONE_INDEX]),) + row[DONE_INDEX + 1 :]


class PgReplayWriter:
    """One connection per process; the same interface as `trainer.replay.writer.ReplayWriter`.

    While the server is unreachable `write_game` holds the game and retries with capped
    backoff: forever by default (an actor keeps its finished games), or for
    `give_up_after_s`, then ConnectionLost.
    """

    def __init__(
        self,
        url: str,
        game: Game,
        with_model_step: bool = True,
        give_up_after_s: float | None = None,
        max_backoff_s: float = 5.0,
    ):
        self.url = url
        self.where = redact_url(url)
        self.game = game
        self.with_model_step = with_model_step
        self.give_up_after_s = give_up_after_s
        self.max_backoff_s = max_backoff_s
        self.reconnects = 0
        self.conn: psycopg.Connection | None = None
        self._retry(self._init_db)

    def _init_db(self, conn: psycopg.Connection) -> None:
        create_schema(conn, with_model_step=self.with_model_step)
        upsert_game_metadata(conn, self.game.spec)

    def _retry(self, fn) -> None:
        """Run fn(conn); on a lost connection reconnect with capped backoff and run it again."""
        started, delay, failed = time.monotonic(), 0.05, False
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = connect(self.url, application_name="selfplay-actor")
                fn(self.conn)
                if failed:
                    self.reconnects += 1
                    log.info("replay server %s is back; write done", self.where)
                return
            except (psycopg.Error, ConnectionLost) as exc:
                if not is_connection_error(exc):
                    raise
                self.close()
                waited = time.monotonic() - started
                if self.give_up_after_s is not None and waited >= self.give_up_after_s:
                    raise ConnectionLost(
                        f"replay server {self.where} unreachable for {waited:.0f}s: {exc}"
                    ) from None
                if not failed:
                    log.warning(
                        "replay server %s unreachable (%s); holding the game and retrying",
                        self.where,
                        (str(exc).strip().splitlines() or ["?"])[0],
                    )
                failed = True
                time.sleep(delay)
                delay = min(self.max_backoff_s, delay * 2)

    def write_game(self, episode_id: str, plies: list[PlyRecord], model_step: int | None = None) -> int:
        with_step = self.with_model_step and model_step is not None
        rows = game_rows(self.game, episode_id, plies, model_step=model_step if with_step else None)
        sql = insert_game_sql(len(rows), with_step)
        params = [v for row in rows for v in pg_row(row)]
        self._retry(lambda conn: conn.execute(sql, params))
        return len(rows)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def __enter__(self) -> PgReplayWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
