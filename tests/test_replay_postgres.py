"""The PostgreSQL replay on a real throwaway server: Rust-actor rows, out-of-order commits,
connection failures, concurrent writer processes and a server restart."""

import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psycopg
import pytest
from replay_data import onehot_random_move, play_game, random_move, write_random_games

from trainer.games import get_game
from trainer.replay.codec import encode_f32
from trainer.replay.postgres.connection import ConnectionLost, ReplayConnectError
from trainer.replay.postgres.reader import PgReplayReader
from trainer.replay.postgres.writer import PgReplayWriter, insert_game_sql, pg_row
from trainer.replay.reader import ReplayReader
from trainer.replay.schema import INSERT_TRANSITION, SchemaError
from trainer.replay.writer import game_rows
from trainer.sources.wait_reason import WaitKind

ROOT = Path(__file__).resolve().parents[1]

# What the Rust actor runs, spelled out here so that our schema code is not checked against itself.
RUST_DDL = """
CREATE TABLE IF NOT EXISTS transitions (
    id TEXT PRIMARY KEY, env_id TEXT NOT NULL, episode_id TEXT NOT NULL, step_number INTEGER NOT NULL,
    state BYTEA NOT NULL, action BYTEA NOT NULL, next_state BYTEA NOT NULL, observation BYTEA NOT NULL,
    next_observation BYTEA NOT NULL, reward REAL NOT NULL, done BOOLEAN NOT NULL, timestamp BIGINT NOT NULL,
    policy_probs BYTEA, mcts_value REAL DEFAULT 0.0, game_outcome REAL, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_transitions_timestamp ON transitions(timestamp);
CREATE INDEX IF NOT EXISTS idx_transitions_episode ON transitions(episode_id);
CREATE INDEX IF NOT EXISTS idx_transitions_env_id ON transitions(env_id);
CREATE TABLE IF NOT EXISTS game_metadata (
    env_id TEXT PRIMARY KEY, display_name TEXT, board_width INTEGER NOT NULL, board_height INTEGER NOT NULL,
    num_actions INTEGER NOT NULL, obs_size INTEGER NOT NULL, legal_mask_offset INTEGER NOT NULL,
    player_count INTEGER NOT NULL, updated_at TIMESTAMP
);
"""


def _read_all(reader) -> list:
    parts = []
    while (chunk := reader.read_new()).scanned:
        parts.append(chunk)
    return parts


def _rust_insert(conn: psycopg.Connection, rows: list[tuple]) -> None:
    """The Rust actor's statement: every ply of a game in one multi-row upsert, done as a boolean."""
    conn.execute(insert_game_sql(len(rows), with_model_step=False), [v for r in rows for v in pg_row(r)])


def _games(env_id: str, n: int, seed: int, choose=random_move) -> list[list[tuple]]:
    game, rng = get_game(env_id), np.random.default_rng(seed)
    return [game_rows(game, f"rust-{seed}-ep-{i}", play_game(game, choose, rng)) for i in range(n)]


def _corrupt(rows: list[tuple]) -> list[tuple]:
    """One bad row of each kind the reader counts, as full contract rows."""
    bad, obs_size = [], len(rows[0][7]) // 4
    nan_obs = encode_f32(np.full(obs_size, np.nan))  # not a NaN outcome: SQLite stores that as NULL
    for k, (col, value) in enumerate([(7, b"\x00" * 12), (5, b"\xff\xff\xff\xff"), (7, nan_obs)]):
        row = list(rows[k])
        row[0] = f"bad-{k}"
        row[col] = value
        bad.append(tuple(row))
    return bad


def test_rust_actor_rows_read_like_the_same_rows_in_sqlite(pg_url, tmp_path):
    games = _games("connect4", 12, seed=1) + _games("tictactoe", 3, seed=2)
    bad = _corrupt(games[0])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(RUST_DDL)
        conn.execute(
            "INSERT INTO game_metadata VALUES ('connect4', 'Connect 4', 7, 6, 7, 93, 84, 2, now()) "
            "ON CONFLICT (env_id) DO NOTHING"
        )
        for rows in games:
            _rust_insert(conn, rows)
        _rust_insert(conn, bad)
    db = tmp_path / "replay.db"
    write_random_games(db, "connect4", 0, seed=0)  # just the schema
    sqlite = sqlite3.connect(db)
    sqlite.executemany(INSERT_TRANSITION.format(extra="", extra_q=""), [r for g in games for r in g] + bad)
    sqlite.commit()
    sqlite.close()

    reader = PgReplayReader(pg_url, "connect4", chunk_rows=50)
    assert reader.probe(min_rows=10) is None  # adds the seq column to the Rust actor's small table
    pg_parts, sq_parts = _read_all(reader), _read_all(ReplayReader(db, "connect4", chunk_rows=50))
    for field in ("obs", "policy", "value"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(p, field) for p in pg_parts]),
            np.concatenate([getattr(p, field) for p in sq_parts]),
        )
    pg_bad = sum((p.bad for p in pg_parts), start=Counter())
    sq_bad = sum((p.bad for p in sq_parts), start=Counter())
    assert pg_bad == sq_bad and sum(pg_bad.values()) == 3
    seqs = np.concatenate([p.rowids for p in pg_parts])
    assert len(set(seqs.tolist())) == len(seqs) == sum(len(g) for g in games[:12])
    assert reader.spec.obs_size == 93 and reader.has_model_step is False
    assert reader.cursor == reader.max_rowid() and reader.pending == []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        _rust_insert(conn, games[1])  # a re-sent game only updates its rows in place
    assert _read_all(reader) == [] and reader.pending == []


def test_out_of_order_commits_skip_nothing_and_repeat_nothing(pg_url):
    game = get_game("tictactoe")
    PgReplayWriter(pg_url, game).close()  # our schema
    a, b, c = _games("tictactoe", 3, seed=3, choose=onehot_random_move)
    slow, fast, aborted = (psycopg.connect(pg_url) for _ in range(3))
    reader = PgReplayReader(pg_url, "tictactoe", chunk_rows=4)
    assert reader.probe() is None

    _rust_insert(slow, a)  # draws the lowest seqs, commits last
    _rust_insert(aborted, c)
    _rust_insert(fast, b)
    fast.commit()
    first = _read_all(reader)
    assert sum(len(p) for p in first) == len(b)
    assert reader.pending  # a's and c's seqs: passed, not committed yet
    checkpoint = (reader.cursor, list(reader.pending))

    aborted.rollback()
    slow.commit()
    second = _read_all(reader)
    assert sum(len(p) for p in second) == len(a)
    assert _read_all(reader) == [] and reader.pending == []  # c's seqs were rolled back: dropped

    # A reader resumed from the checkpoint taken before the slow commit reads exactly a.
    resumed = PgReplayReader(pg_url, "tictactoe", chunk_rows=4)
    resumed.cursor, resumed.pending = checkpoint[0], checkpoint[1]
    again = _read_all(resumed)
    assert sorted(np.concatenate([p.rowids for p in again]).tolist()) == sorted(
        np.concatenate([p.rowids for p in second]).tolist()
    )
    assert resumed.count_rows(resumed.cursor) == len(a) + len(b)
    for conn in (slow, fast, aborted):
        conn.close()


def test_connection_failures_are_one_line_or_a_wait(pg_server, pg_url):
    for url, text in [
        (pg_server.url(pg_url.rsplit("/", 1)[1], password="wrong"), "password"),
        (pg_server.url("no_such_db"), "no such database"),
        ("postgresql://postgres@127.0.0.1:5432/x?nonsense=1", "malformed"),
    ]:
        with pytest.raises(ReplayConnectError) as err:
            PgReplayReader(url, "tictactoe").probe()
        line = str(err.value)
        assert "\n" not in line and text in line and pg_server.password not in line and "wrong" not in line
    port_closed = pg_server.url().replace(f":{pg_server.port}/", ":1/")
    reason = PgReplayReader(port_closed, "tictactoe").probe()
    assert reason.kind == WaitKind.CONNECTION_LOST and pg_server.password not in reason.detail
    assert PgReplayReader(pg_url, "tictactoe").probe().kind == WaitKind.NO_TABLE
    with pytest.raises(ReplayConnectError):
        PgReplayWriter(pg_server.url("no_such_db"), get_game("tictactoe"))


WRITER_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, "tests")
from replay_data import play_game, random_move
from trainer.games import get_game
from trainer.replay.postgres.writer import PgReplayWriter
url, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
game, rng = get_game("tictactoe"), np.random.default_rng(int(tag))
with PgReplayWriter(url, game) as w:
    rows = sum(w.write_game(f"actor{tag}-ep-{i}", play_game(game, random_move, rng), model_step=int(tag)) for i in range(n))
print(rows)
"""


def test_four_writer_processes_lose_and_duplicate_nothing(pg_url):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, pg_url, str(k), "15"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    reader = PgReplayReader(pg_url, "tictactoe", chunk_rows=16)
    seqs: list[int] = []
    while any(p.poll() is None for p in procs) or not seqs:
        if reader.probe() is None:
            seqs += [s for part in _read_all(reader) for s in part.rowids.tolist()]
        time.sleep(0.02)
    written = sum(int(p.communicate(timeout=60)[0]) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    seqs += [s for part in _read_all(reader) for s in part.rowids.tolist()]
    with psycopg.connect(pg_url) as conn:
        table = [r[0] for r in conn.execute("SELECT seq FROM transitions ORDER BY seq")]
        (episodes,) = conn.execute("SELECT count(DISTINCT episode_id) FROM transitions").fetchone()
    assert len(seqs) == len(set(seqs)) == written == len(table)
    assert sorted(seqs) == table and episodes == 60


def test_server_restart_reader_waits_writer_holds_the_game(pg_server, pg_url):
    game, rng = get_game("tictactoe"), np.random.default_rng(5)
    writer = PgReplayWriter(pg_url, game, max_backoff_s=0.5)
    reader = PgReplayReader(pg_url, "tictactoe")
    before = sum(writer.write_game(f"before-{i}", play_game(game, random_move, rng)) for i in range(3))
    assert reader.probe() is None and sum(len(p) for p in _read_all(reader)) == before

    pg_server.restart()  # pg_ctl restart -m fast: every connection is cut
    with pytest.raises(ConnectionLost):
        reader.read_new()
    assert reader.probe() is None  # reconnected

    pg_server.shutdown()
    assert reader.probe().kind == WaitKind.CONNECTION_LOST
    with pytest.raises(ConnectionLost):
        reader.read_new()
    held = play_game(game, random_move, rng)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(writer.write_game("during-outage", held)))
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # holding the game while the server is down
    pg_server.resume()
    thread.join(timeout=30)
    assert result == [len(held)] and writer.reconnects == 1
    after = writer.write_game("after", play_game(game, random_move, rng))
    assert reader.probe() is None
    assert sum(len(p) for p in _read_all(reader)) == len(held) + after  # from the cursor, nothing twice
    assert reader.count_rows() == before + len(held) + after
    writer.close()
    reader.close()


def test_writer_adds_model_step_and_upserts_metadata(pg_url):
    game, rng = get_game("connect4"), np.random.default_rng(6)
    with PgReplayWriter(pg_url, game) as writer:
        writer.write_game("g1", play_game(game, random_move, rng), model_step=42)
        writer.write_game("g2", play_game(game, random_move, rng))
    reader = PgReplayReader(pg_url, "connect4")
    assert reader.probe() is None and reader.has_model_step
    _read_all(reader)
    assert reader.model_step == 42
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM transitions WHERE done").fetchone()[0] == 2
        assert conn.execute("SELECT obs_size, display_name FROM game_metadata").fetchall() == [
            (93, "Connect 4")
        ]
        assert conn.execute("SELECT count(*) FROM transitions WHERE model_step IS NULL").fetchone()[0] > 0


def test_big_table_without_seq_is_an_error_until_migrated(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(RUST_DDL)
        for rows in _games("tictactoe", 4, seed=7):
            _rust_insert(conn, rows)
    reader = PgReplayReader(pg_url, "tictactoe")
    reader.auto_migrate_max_bytes = 0  # as if the table were too big to rewrite under writers
    with pytest.raises(SchemaError, match="migrate"):
        reader.probe()
    cmd = [sys.executable, "-m", "trainer", "replay", "migrate", "--db"]
    not_usable = [
        pg_url.rsplit("/", 1)[0] + "/no_such_db",
        "postgresql://user@localhost:notaport/db",
        str(ROOT / "data" / "replay.db"),  # SQLite: nothing to migrate
    ]
    for db in not_usable:
        bad = subprocess.run(cmd + [db], cwd=ROOT, capture_output=True, text=True)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error:"), db
    done = subprocess.run(cmd + [pg_url], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # The older name runs the same code.
    again = subprocess.run(
        [sys.executable, "-m", "trainer.replay.postgres", "migrate", "--db", pg_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    reader.close()
    assert reader.probe() is None and len(np.concatenate([p.rowids for p in _read_all(reader)])) > 0


def test_a_recreated_table_is_reported_as_replaced(pg_url):
    game, rng = get_game("tictactoe"), np.random.default_rng(9)
    with PgReplayWriter(pg_url, game) as writer:
        writer.write_game("g", play_game(game, random_move, rng))
    reader = PgReplayReader(pg_url, "tictactoe")
    assert reader.probe() is None and _read_all(reader) and reader.replaced() is None
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE transitions CASCADE")
    with PgReplayWriter(pg_url, game) as writer:  # a fresh table: seqs start again at 1
        rows = writer.write_game("new", play_game(game, random_move, rng))
    assert reader.replaced() == "the table was recreated"
    reader.reopen()
    assert reader.probe() is None and sum(len(p) for p in _read_all(reader)) == rows


def test_a_read_stuck_behind_a_table_lock_times_out_as_a_transient_failure(pg_url):
    game, rng = get_game("tictactoe"), np.random.default_rng(8)
    with PgReplayWriter(pg_url, game) as writer:
        rows = writer.write_game("g", play_game(game, random_move, rng))
    reader = PgReplayReader(pg_url, "tictactoe")
    reader.statement_timeout_ms = 200
    assert reader.probe() is None
    locker = psycopg.connect(pg_url)
    locker.execute("LOCK TABLE transitions IN ACCESS EXCLUSIVE MODE")  # e.g. an operator's migration
    with pytest.raises(ConnectionLost):
        reader.read_new()
    locker.rollback()
    locker.close()
    assert sum(len(p) for p in _read_all(reader)) == rows  # reconnected, from the cursor
