"""Training targets the replay source builds from real SQLite rows: the value target mix
(outcome z and search value q) and position averaging."""

import sqlite3
import time

import numpy as np
import pytest
from replay_data import write_random_games

from trainer.config.daemon import DaemonConfig
from trainer.sources.replay_source import ReplaySource


def _source(db, **kw) -> ReplaySource:
    base = dict(
        db=db, env_id="tictactoe", batch_size=16, min_rows=20, max_reuse=0, poll_interval=0.02, seed=0
    )
    return ReplaySource(DaemonConfig(**{**base, **kw}))


def _first_batch(src: ReplaySource):
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        if (batch := src.next_batch()) is not None:
            return batch
        time.sleep(0.01)
    raise AssertionError(f"no batch: {src.waiting_reason}")


def _window_values(db, **kw) -> np.ndarray:
    src = _source(db, **kw)
    try:
        _first_batch(src)
    finally:
        src.close()
    return src.window.newest(len(src.window))[2]


@pytest.fixture
def db_with_search_values(tmp_path):
    """Random games; q = 0.5 on even rowids, NULL on rowids divisible by 3, an out-of-range
    q on rowid 5, and no outcome (only q) on rowid 4."""
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 12, seed=3)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE transitions SET mcts_value = CASE WHEN rowid % 2 = 0 THEN 0.5 ELSE -0.25 END")
        conn.execute("UPDATE transitions SET mcts_value = NULL WHERE rowid % 3 = 0")
        conn.execute("UPDATE transitions SET mcts_value = 7.0 WHERE rowid = 5")
        conn.execute("UPDATE transitions SET game_outcome = NULL WHERE rowid = 4")
    rows = conn.execute("SELECT rowid, game_outcome, mcts_value FROM transitions ORDER BY rowid").fetchall()
    conn.close()
    return db, rows


def test_value_target_mix_blends_outcome_and_search_value(db_with_search_values):
    db, rows = db_with_search_values
    z = np.array([o if o is not None else q for _, o, q in rows], np.float32)
    q_usable = np.array([q is not None and abs(q) <= 1 for _, _, q in rows])
    q = np.array([q if ok else np.nan for (_, _, q), ok in zip(rows, q_usable)], np.float32)
    assert rows[3][1] is None and z[3] == 0.5  # rowid 4: no outcome, q stands in

    np.testing.assert_array_equal(_window_values(db), z)  # a = 0: today's target
    both = np.where(q_usable, q, z)
    np.testing.assert_allclose(_window_values(db, value_target_mix=1.0), both)
    np.testing.assert_allclose(_window_values(db, value_target_mix=0.25), 0.75 * z + 0.25 * both, atol=1e-6)
    # Rows without a usable q (NULL, outside [-1, 1]) keep their outcome whatever a is.
    assert not q_usable[2] and not q_usable[4] and _window_values(db, value_target_mix=1.0)[4] == z[4]


def test_position_averaging_in_the_replay_source(tmp_path):
    db = tmp_path / "replay.db"
    games = 40
    write_random_games(db, "connect4", games, seed=5)
    conn = sqlite3.connect(db)
    first = conn.execute("SELECT observation, game_outcome FROM transitions WHERE step_number = 0").fetchall()
    distinct = conn.execute("SELECT COUNT(DISTINCT observation) FROM transitions").fetchone()[0]
    conn.close()
    start = np.frombuffer(first[0][0], np.float32)
    assert len(first) == games and all(obs == first[0][0] for obs, _ in first)

    # The outcome alone as the value target (Connect Four's default mixes in mcts_value).
    src = _source(
        db, env_id="connect4", batch_size=256, augment=False, average_positions=True, value_target_mix=0.0
    )
    try:
        batch = _first_batch(src)
    finally:
        src.close()
    assert len(src.window.positions) == distinct < src.window.sample_size
    # The opening position is one sample among the distinct ones, its value the mean outcome.
    at_start = (batch.obs.numpy() == start).all(axis=1)
    assert at_start.sum() <= 5
    obs, _, value = src.window.sample_arrays()
    slot = int(np.flatnonzero((obs[: len(src.window.positions)] == start).all(axis=1))[0])
    assert value[slot] == pytest.approx(np.mean([o for _, o in first]), abs=1e-6)
