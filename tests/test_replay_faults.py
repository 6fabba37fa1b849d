"""What production does to the replay DB under a running reader: a writer killed mid-transaction
(hot journal), a damaged page, the file deleted and recreated, rows with absurd numbers.

Real SQLite files, real killed processes, real daemon processes. The reader may wait or skip,
never crash, and must say why in stats.json.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import read_stats, start_daemon, stop, tail_log, wait_for
from replay_data import write_random_games

from trainer.config.daemon import DaemonConfig
from trainer.games import get_game
from trainer.replay.codec import encode_action, encode_f32
from trainer.replay.reader import BAD_UNREADABLE, ReplayReader
from trainer.sources.replay_source import ReplaySource
from trainer.sources.wait_reason import WaitKind

PAGE = 4096

# A rollback-journal writer (the Rust actor's mode) killed with SIGKILL after its inserts
# spilled pages into the DB file: the journal it leaves is hot.
KILLED_WRITER = r"""
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size=2")
conn.execute("BEGIN IMMEDIATE")
for i in range(400):
    conn.execute(
        "INSERT INTO transitions (id, env_id, episode_id, step_number, state, action, next_state, observation,"
        " next_observation, reward, done, timestamp) VALUES (?, 'tictactoe', 'killed', 0, x'00', x'00000000',"
        " x'00', randomblob(108), x'00', 0, 0, 1)", (f"killed-{i}",))
os.kill(os.getpid(), 9)
"""


def leave_hot_journal(db: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert Path(f"{db}-journal").exists()


def roll_back_hot_journal(db: Path) -> None:
    """What any writer's next open does; the killed transaction's rows are gone."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT COUNT(*) FROM transitions WHERE episode_id = 'killed'").fetchone()[0] == 0
    finally:
        conn.close()


def damage_page(db: Path, page_index: int, seed: int = 0) -> None:
    with open(db, "r+b") as f:
        f.seek(PAGE * page_index)
        f.write(np.random.default_rng(seed).bytes(PAGE))


def table_leaf_page(db: Path) -> int:
    """A leaf page of the transitions table in the middle of the file (0-based page index):
    index pages interleave with table pages, so a fixed page number might miss the table."""
    conn = sqlite3.connect(db)
    try:
        pages = [
            p
            for (p,) in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'transitions' AND pagetype = 'leaf' ORDER BY pageno"
            )
        ]
    except sqlite3.OperationalError:  # SQLite built without dbstat: page 60 is a table leaf here
        return 59
    finally:
        conn.close()
    return pages[len(pages) // 2] - 1


def _damaged_db(db: Path, games: int = 200) -> int:
    """A rollback-journal DB (one file, no WAL to fold in) with one table leaf page garbage."""
    n = write_random_games(db, "tictactoe", games, seed=1, journal="delete", games_per_commit=50)
    damage_page(db, table_leaf_page(db))
    return n


def _read_all(reader: ReplayReader, limit: int | None = None) -> tuple[int, Counter]:
    usable, bad = 0, Counter()
    while True:
        chunk = reader.read_new(limit)
        usable += len(chunk)
        bad.update(chunk.bad)
        if chunk.scanned == 0 and not chunk.bad:
            return usable, bad


# --- the reader ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", [64, 4096])
def test_damaged_page_is_skipped_and_counted_and_the_rest_is_read(tmp_path, chunk_rows):
    db = tmp_path / "replay.db"
    total = _damaged_db(db)
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):  # the damage is real: a scan fails
        conn = sqlite3.connect(db)
        try:
            conn.execute("SELECT * FROM transitions").fetchall()
        finally:
            conn.close()
    with ReplayReader(db, "tictactoe", chunk_rows=chunk_rows) as reader:
        usable, bad = _read_all(reader)
        assert reader.cursor == total
    # One leaf page of rows is lost, nothing else; every row is either read or counted.
    assert 0 < bad[BAD_UNREADABLE] <= 20
    assert usable + bad[BAD_UNREADABLE] == total and sum(bad.values()) == bad[BAD_UNREADABLE]


def test_refill_on_resume_stops_at_a_damaged_page_instead_of_failing(tmp_path):
    db = tmp_path / "replay.db"
    total = _damaged_db(db)
    with ReplayReader(db, "tictactoe") as reader:
        assert reader.probe() is None
        newest = reader.read_newest(total, total)
    # Everything but the damaged page: the refill goes on below it.
    assert total - 20 <= len(newest) < total and newest.rowids[-1] == total


def test_hot_journal_is_a_wait_not_a_schema_error_and_ends_when_a_writer_rolls_it_back(tmp_path):
    db = tmp_path / "replay.db"
    rows = write_random_games(db, "tictactoe", 10, seed=1, journal="delete")
    leave_hot_journal(db)
    reader = ReplayReader(db, "tictactoe")
    reason = reader.probe()
    assert reason is not None and reason.kind == WaitKind.DB_UNREADABLE
    roll_back_hot_journal(db)
    assert reader.probe() is None
    usable, bad = _read_all(reader)
    assert usable == rows and not bad
    reader.close()


def test_overflowing_policy_mass_and_out_of_range_values_are_bad_rows(tmp_path):
    db = tmp_path / "replay.db"
    good = write_random_games(db, "tictactoe", 2, seed=4)
    game = get_game("tictactoe")
    obs = encode_f32(game.encode(game.initial_state()))
    huge = encode_f32(np.full(9, 3e38, np.float32))  # finite, but the sum is not
    uniform = encode_f32(np.full(9, 1 / 9, np.float32))
    cases = [  # (policy_probs, mcts_value, game_outcome)
        (huge, 0.0, 1.0),
        (uniform, 0.0, 2.0),
        (uniform, -7.5, None),  # no outcome: mcts_value is the target, and it is out of range
    ]
    conn = sqlite3.connect(db)
    for k, (p, mv, go) in enumerate(cases):
        conn.execute(
            "INSERT INTO transitions (id, env_id, episode_id, step_number, state, action, next_state, "
            "observation, next_observation, reward, done, timestamp, policy_probs, mcts_value, game_outcome) "
            "VALUES (?, 'tictactoe', 'odd', ?, x'00', ?, x'00', ?, x'00', 0.0, 0, 1, ?, ?, ?)",
            (f"odd-{k}", k, encode_action(0), obs, p, mv, go),
        )
    conn.commit()
    conn.close()
    with ReplayReader(db, "tictactoe") as reader:
        usable, bad = _read_all(reader)
    assert usable == good
    assert dict(bad) == {"policy_mass": 1, "value_range": 2}


# --- the source ------------------------------------------------------------------------------


def _cfg(db, **kw) -> DaemonConfig:
    base = {
        "db": db,
        "env_id": "tictactoe",
        "batch_size": 16,
        "min_rows": 20,
        "max_reuse": 0,
        "poll_interval": 0.02,
        "seed": 0,
    }
    base.update(kw)
    return DaemonConfig(**base)


def _batches_while(src: ReplaySource, cond, timeout: float = 15.0) -> int:
    """Batches taken until cond(stats) holds; fails on timeout."""
    deadline, n = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        if src.next_batch() is not None:
            n += 1
        if cond(src.stats()):
            return n
        time.sleep(0.005)
    raise AssertionError(f"timed out: {src.stats()} / {src.waiting_reason}")


def test_source_trains_from_its_window_through_a_hot_journal_and_resumes_reading(tmp_path):
    db = tmp_path / "replay.db"
    rows = write_random_games(db, "tictactoe", 10, seed=1, journal="delete")
    src = ReplaySource(_cfg(db))
    try:
        _batches_while(src, lambda s: s["rows_seen"] == rows)
        leave_hot_journal(db)
        _batches_while(src, lambda s: s["replay_status"] == WaitKind.DB_UNREADABLE.value)
        assert src.stats()["replay_error"]
        # Batches keep coming from the window while no row can be read.
        got = 0
        for _ in range(50):
            got += src.next_batch() is not None
            time.sleep(0.005)
        assert got > 0 and src.stats()["replay_status"] == "db_unreadable"
        roll_back_hot_journal(db)
        more = write_random_games(db, "tictactoe", 5, seed=2, journal="delete")
        _batches_while(src, lambda s: s["rows_seen"] == rows + more and s["replay_status"] == "ok")
    finally:
        src.close()


def test_source_waits_with_the_db_reason_once_the_reuse_budget_is_spent(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 10, seed=1, journal="delete")
    src = ReplaySource(_cfg(db, max_reuse=1.0))
    try:
        _batches_while(
            src, lambda s: src.waiting_reason is not None and src.waiting_reason.kind == WaitKind.REUSE_LIMIT
        )
        leave_hot_journal(db)
        _batches_while(
            src,
            lambda s: src.waiting_reason is not None and src.waiting_reason.kind == WaitKind.DB_UNREADABLE,
        )
    finally:
        src.close()


def test_resume_on_a_damaged_db_refills_and_trains(tmp_path):
    db = tmp_path / "replay.db"
    n = write_random_games(db, "tictactoe", 200, seed=1, journal="delete", games_per_commit=50)
    first = ReplaySource(_cfg(db))
    try:
        _batches_while(first, lambda s: s["rows_seen"] == n)
        state = first.state_dict()
    finally:
        first.close()
    damage_page(db, table_leaf_page(db))
    src = ReplaySource(_cfg(db))
    src.load_state_dict(state)
    try:
        # The refill steps over the damaged page: the window holds every other row.
        _batches_while(src, lambda s: s["window_rows"] >= n - 20 and s["replay_samples"] > 0)
        more = write_random_games(db, "tictactoe", 5, seed=2, journal="delete")
        _batches_while(src, lambda s: s["rows_seen"] == n + more)
    finally:
        src.close()


def test_source_rereads_a_replaced_db_from_its_first_row(tmp_path):
    db = tmp_path / "replay.db"
    old = write_random_games(db, "tictactoe", 30, seed=1)
    src = ReplaySource(_cfg(db))
    try:
        _batches_while(src, lambda s: s["rows_seen"] == old)
        for p in tmp_path.glob("replay.db*"):
            p.unlink()
        new = write_random_games(db, "tictactoe", 10, seed=2)  # fewer rows: rowids far below the cursor
        _batches_while(src, lambda s: s["rows_seen"] == old + new and s["replay_cursor"] <= new + 1)
        assert src.stats()["replay_buffer_size"] == new
    finally:
        src.close()


# --- the daemon ------------------------------------------------------------------------------

FAST = [
    "--threads",
    "1",
    "--min-rows",
    "50",
    "--stats-interval",
    "5",
    "--log-interval",
    "50",
    "--batch-size",
    "16",
    "--wait-interval",
    "0.05",
    "--checkpoint-interval",
    "1000",
]


def _stats_where(data: Path, cond, what: str, proc, timeout: float = 60.0) -> dict:
    return wait_for(lambda: (s := read_stats(data)) and cond(s) and s, timeout, what, proc, data)


def test_daemon_rides_out_a_hot_journal_and_a_restart_with_one(tmp_path):
    db = tmp_path / "replay.db"
    rows = write_random_games(db, "tictactoe", 30, seed=1, journal="delete")
    proc = start_daemon(tmp_path, "--steps", "0", "--max-reuse", "2", *FAST)
    try:
        _stats_where(
            tmp_path,
            lambda s: s["rows_seen"] == rows and s["state"] == "waiting_for_data",
            "the reuse limit on the first rows",
            proc,
        )
        leave_hot_journal(db)
        _stats_where(
            tmp_path,
            lambda s: (
                s.get("replay_status") == "db_unreadable"
                and s["state"] == "waiting_for_data"
                and s["state_reason"] == s["replay_error"]
            ),
            "a wait on the hot journal",
            proc,
        )
        assert stop(proc) == 0, tail_log(tmp_path)
        # A restart finds the hot journal before it has read anything: it waits, no exit 2.
        proc = start_daemon(tmp_path, "--steps", "0", "--max-reuse", "2", *FAST)
        _stats_where(
            tmp_path,
            lambda s: s["state"] == "waiting_for_data" and s.get("replay_status") == "db_unreadable",
            "the restarted daemon waiting on the hot journal",
            proc,
        )
        time.sleep(1.0)
        assert proc.poll() is None, tail_log(tmp_path)
        roll_back_hot_journal(db)
        more = write_random_games(db, "tictactoe", 30, seed=2, journal="delete")
        # More samples than the first rows' reuse budget: the new rows were trained on.
        done = _stats_where(
            tmp_path,
            lambda s: s["rows_seen"] == rows + more and s["samples_seen"] > 2 * rows + 16 * 10,
            "training on the rows written after the rollback",
            proc,
        )
        assert done["replay_status"] == "ok" and done["bad_rows"] == 0
        assert stop(proc) == 0, tail_log(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_daemon_trains_past_a_damaged_page(tmp_path):
    db = tmp_path / "replay.db"
    total = _damaged_db(db)
    proc = start_daemon(tmp_path, "--steps", "0", "--max-reuse", "0", *FAST)
    try:
        s = _stats_where(
            tmp_path,
            lambda s: s["step"] >= 50 and s["rows_seen"] + s["bad_rows"] == total,
            "training past the damaged page",
            proc,
        )
        assert s["bad_rows_unreadable"] == s["bad_rows"] > 0
        assert stop(proc) == 0, tail_log(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_daemon_rereads_a_deleted_and_recreated_db(tmp_path):
    db = tmp_path / "replay.db"
    old = write_random_games(db, "tictactoe", 20, seed=1)
    proc = start_daemon(tmp_path, "--steps", "0", "--max-reuse", "1", *FAST)
    try:
        s = _stats_where(
            tmp_path,
            lambda s: s["rows_seen"] == old and s["state"] == "waiting_for_data",
            "the reuse limit on the old DB",
            proc,
        )
        stuck_samples = s["samples_seen"]
        for p in tmp_path.glob("replay.db*"):
            p.unlink()
        new = write_random_games(db, "tictactoe", 60, seed=2)  # rowids restart at 1, more than before
        s = _stats_where(
            tmp_path,
            lambda s: s["rows_seen"] == old + new and s["samples_seen"] > stuck_samples + 16 * 20,
            "training on the new DB's rows",
            proc,
        )
        assert s["replay_buffer_size"] == new and s["replay_status"] == "ok"
        assert stop(proc) == 0, tail_log(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
