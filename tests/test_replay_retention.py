"""--replay-keep-rows on a real PostgreSQL server: old rows go, the newest stay, nothing unread
is deleted, and training goes on."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
from daemon_harness import DAEMON_FAST, read_stats, start_daemon, stop, wait_for, wait_for_step
from replay_data import play_game, random_move

from trainer.config.daemon import DaemonConfig
from trainer.games import get_game
from trainer.replay.postgres.writer import PgReplayWriter, insert_game_sql, pg_row
from trainer.replay.retention import rows_to_keep
from trainer.replay.writer import game_rows
from trainer.sources.replay_source import ReplaySource

ROOT = Path(__file__).resolve().parents[1]
KEEP = 1500


def _episodes_by_seq(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT episode_id FROM transitions ORDER BY seq").fetchall()
    return [r[0] for r in rows]


def _stream_games(
    url: str, done: threading.Event, written: list[tuple[str, int]], pause: list[float]
) -> None:
    """Writes games until `done`, sleeping pause[0] seconds between them."""
    game, rng = get_game("tictactoe"), np.random.default_rng(11)
    with PgReplayWriter(url, game) as writer:
        while not done.is_set():
            episode = f"g{len(written):05d}"
            written.append((episode, writer.write_game(episode, play_game(game, random_move, rng))))
            time.sleep(pause[0])


def _table_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM transitions").fetchone()[0]


def test_daemon_keeps_the_newest_rows_while_it_trains_on(pg_url, tmp_path):
    assert rows_to_keep(KEEP, 100) == KEEP  # the window below is too small to raise it
    written: list[tuple[str, int]] = []
    done, pause = threading.Event(), [0.002]
    writer = threading.Thread(target=_stream_games, args=(pg_url, done, written, pause), daemon=True)
    writer.start()
    args = ["--db", pg_url, "--steps", "0", "--window", "100", "--replay-keep-rows", str(KEEP)]
    proc = start_daemon(
        tmp_path, *args, *DAEMON_FAST, "--batch-size", "32", "--eval-interval", "0", "--poll-interval", "0.2"
    )
    try:
        wait_for(lambda: sum(n for _, n in written) > 2 * KEEP, 60, "a backlog", proc, tmp_path)
        pause[0] = 0.05  # a steady stream: a few hundred rows per retention run (every 2 s)
        mid = wait_for(
            lambda: (s := read_stats(tmp_path)) and s.get("replay_rows_deleted", 0) > 0 and s,
            120,
            "rows deleted",
            proc,
            tmp_path,
        )
        sizes, t_end = [], time.monotonic() + 6.0
        while time.monotonic() < t_end:
            sizes.append(_table_rows(pg_url))
            time.sleep(0.5)
        streamed = read_stats(tmp_path)
        # Bounded near KEEP while the rows written keep growing, and training goes on.
        assert max(sizes) < KEEP + 1200 < sum(n for _, n in written), sizes
        assert streamed["rows_seen"] > mid["rows_seen"] and streamed["step"] > mid["step"]
        done.set()
        writer.join(30)
        total = sum(n for _, n in written)
        final = wait_for(
            lambda: (
                (s := read_stats(tmp_path))
                and s["rows_seen"] >= total
                and s["replay_buffer_size"] == KEEP
                and s
            ),
            60,
            "the replay trimmed to the rows kept",
            proc,
            tmp_path,
        )
        assert final["rows_seen"] == total and final["replay_rows_deleted"] == total - KEEP
        wait_for_step(tmp_path, final["step"] + 10, 60, proc)  # still training
    finally:
        done.set()
        assert stop(proc) == 0
    kept = _episodes_by_seq(pg_url)
    assert len(kept) == KEEP
    # The newest: the games written last, the oldest of them possibly cut at a ply.
    episodes = [e for e, _ in written]
    assert sorted(set(kept)) == episodes[episodes.index(kept[0]) :]


def _pump(src: ReplaySource) -> bool:
    """Train-side pull, so the source's worker keeps running; always True."""
    src.next_batch()
    return True


def test_rows_of_an_open_transaction_are_read_not_deleted(pg_url):
    game, rng = get_game("tictactoe"), np.random.default_rng(5)
    with PgReplayWriter(pg_url, game) as writer:
        before = sum(writer.write_game(f"old-{i}", play_game(game, random_move, rng)) for i in range(200))
    slow_rows = game_rows(game, "slow", play_game(game, random_move, rng))
    slow = psycopg.connect(pg_url)
    slow.execute(insert_game_sql(len(slow_rows), False), [v for r in slow_rows for v in pg_row(r)])
    with PgReplayWriter(pg_url, game) as writer:
        after = sum(writer.write_game(f"new-{i}", play_game(game, random_move, rng)) for i in range(200))
    keep = rows_to_keep(1, 10)
    assert after - keep > len(slow_rows)  # enough rows that the slow game's would go if not protected

    cfg = DaemonConfig(
        db=pg_url,
        env_id="tictactoe",
        batch_size=4,
        min_rows=1,
        max_reuse=0,
        window=10,
        poll_interval=0.02,
        replay_keep_rows=1,
        seed=0,
    )
    src = ReplaySource(cfg)
    try:
        wait_for(
            lambda: _pump(src) and src.stats()["replay_rows_deleted"] >= before,
            30,
            "the rows before the open transaction deleted",
        )
        time.sleep(0.5)
        assert src.stats()["replay_rows_deleted"] == before  # not a row past the gap
        slow.commit()
        wait_for(
            lambda: _pump(src) and src.stats()["rows_seen"] == before + after + len(slow_rows),
            30,
            "the late game read",
        )
        wait_for(
            lambda: _pump(src) and src.stats()["replay_buffer_size"] == keep,
            30,
            "the replay trimmed to the rows kept",
        )
    finally:
        slow.close()
        src.close()
    kept = _episodes_by_seq(pg_url)
    assert len(kept) == keep and kept[-1].startswith("new-")


def test_keep_rows_on_a_sqlite_replay_is_one_error_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "trainer", "--db", str(tmp_path / "replay.db"), "--replay-keep-rows", "100"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error:") and "--replay-keep-rows" in r.stderr
