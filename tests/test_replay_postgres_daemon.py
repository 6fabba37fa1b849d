"""The daemon and the Python actor on a PostgreSQL replay, as real processes: the actor
writes, the daemon trains and publishes, and both ride out a server restart."""

import subprocess
import time

import numpy as np
import psycopg
from actor_support import actor_cmd, actor_env
from daemon_harness import DAEMON_FAST, read_stats, start_daemon, stop, wait_for, wait_for_step
from replay_data import play_game, random_move

from trainer.config.daemon import DaemonConfig
from trainer.games import get_game
from trainer.replay.postgres.writer import PgReplayWriter, insert_game_sql, pg_row
from trainer.replay.writer import game_rows
from trainer.sources.replay_source import ReplaySource

FAST = [*DAEMON_FAST, "--batch-size", "32", "--eval-interval", "0", "--poll-interval", "0.2"]


def _episodes(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(DISTINCT episode_id) FROM transitions WHERE done").fetchone()[0]


def test_daemon_trains_from_actor_games_in_postgres_and_survives_a_restart(pg_server, pg_url, tmp_path):
    actor = subprocess.run(
        actor_cmd(
            "--env-id",
            "tictactoe",
            "--db",
            pg_url,
            "--episodes",
            "20",
            "--sims",
            "0",
            "--model-dir",
            str(tmp_path / "models"),
            "--seed",
            "1",
        ),
        cwd=tmp_path,
        env=actor_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert actor.returncode == 0, actor.stderr[-2000:]
    assert _episodes(pg_url) == 20
    assert not (tmp_path / "postgresql:").exists(), "a URL was opened as a SQLite path"

    assert pg_server.password not in actor.stderr + actor.stdout

    proc = start_daemon(tmp_path, "--db", pg_url, "--steps", "0", "--checkpoint-interval", "20", *FAST)
    try:
        wait_for_step(tmp_path, 30, 180, proc)
        wait_for(
            lambda: (tmp_path / "models" / "latest.onnx").exists(), 60, "a published model", proc, tmp_path
        )
        rows_before = read_stats(tmp_path)["rows_seen"]

        pg_server.shutdown()  # the daemon trains on from its window and says why no rows come
        down = wait_for(
            lambda: (s := read_stats(tmp_path)) and s["replay_status"] == "connection_lost" and s,
            60,
            "replay_status connection_lost in stats",
            proc,
            tmp_path,
        )
        assert down["replay_error"] and pg_server.password not in down["replay_error"]
        wait_for_step(tmp_path, down["step"] + 20, 120, proc)
        pg_server.resume()
        pg_server.restart()  # pg_ctl restart -m fast: the new connection is cut too
        game, rng = get_game("tictactoe"), np.random.default_rng(2)
        with PgReplayWriter(pg_url, game) as writer:
            new_rows = sum(
                writer.write_game(f"after-restart-{i}", play_game(game, random_move, rng)) for i in range(5)
            )
        stats = wait_for(
            lambda: (s := read_stats(tmp_path)) and s["rows_seen"] >= rows_before + new_rows and s,
            120,
            "the rows written after the restart",
            proc,
            tmp_path,
        )
        assert stats["rows_seen"] == rows_before + new_rows  # from the cursor: nothing read twice
        step = stats["step"]
        wait_for_step(tmp_path, step + 20, 120, proc)  # still training
    finally:
        assert stop(proc) == 0
    final = read_stats(tmp_path)
    assert (
        final["state"] == "stopped"
        and final["replay_status"] == "ok"
        and final["rows_seen"] == stats["rows_seen"]
    )
    for path in [tmp_path / "stats.json", *(tmp_path / "checkpoints").glob("*.pt"), tmp_path / "daemon.log"]:
        assert pg_server.password.encode() not in path.read_bytes(), path


def test_daemon_waits_for_an_unreachable_server_and_exits_2_on_a_bad_password(pg_server, pg_url, tmp_path):
    bad = pg_server.url(pg_url.rsplit("/", 1)[1], password="not-the-password")
    proc = start_daemon(tmp_path, "--db", bad, "--steps", "5", *FAST)
    assert proc.wait(60) == 2
    log = (tmp_path / "daemon.log").read_text()
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    assert errors and "not-the-password" not in log and "password" in errors[-1]

    down = pg_server.url("postgres").replace(f":{pg_server.port}/", ":1/")
    proc = start_daemon(
        tmp_path, "--db", down, "--steps", "5", "--max-wait", "3", "--wait-interval", "0.2", *FAST
    )
    assert proc.wait(60) == 2
    final = read_stats(tmp_path)
    assert final["state"] == "stopped" and pg_server.password not in (tmp_path / "stats.json").read_text()


def _source_cfg(url: str) -> DaemonConfig:
    return DaemonConfig(
        db=url, env_id="tictactoe", batch_size=4, min_rows=1, max_reuse=0, poll_interval=0.02, seed=0
    )


def _batch(src: ReplaySource, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (batch := src.next_batch()) is not None:
            return batch
        time.sleep(0.01)
    raise AssertionError(f"no batch within {timeout}s: {src.waiting_reason}")


def test_checkpointed_source_reads_a_game_that_committed_after_the_checkpoint(pg_url):
    game, rng = get_game("tictactoe"), np.random.default_rng(3)
    PgReplayWriter(pg_url, game).close()
    slow_rows = game_rows(game, "slow", play_game(game, random_move, rng))
    slow = psycopg.connect(pg_url)
    slow.execute(
        insert_game_sql(len(slow_rows), False), [v for r in slow_rows for v in pg_row(r)]
    )  # not committed
    with PgReplayWriter(pg_url, game) as writer:
        fast = writer.write_game("fast", play_game(game, random_move, rng))

    first = ReplaySource(_source_cfg(pg_url))
    _batch(first)
    state = first.state_dict()
    first.close()
    assert state["rows_seen"] == fast and state["pending"]  # the slow game's seqs, passed but not committed

    slow.commit()
    slow.close()
    resumed = ReplaySource(_source_cfg(pg_url))
    resumed.load_state_dict(state)
    try:
        wait_for(
            lambda: resumed.stats()["rows_seen"] == fast + len(slow_rows) or (_batch(resumed) and False),
            20,
            "the late commit",
        )
        time.sleep(0.3)
        assert resumed.stats()["rows_seen"] == fast + len(slow_rows)
        assert resumed.state_dict()["pending"] == []
    finally:
        resumed.close()


def test_daemon_killed_resumes_from_its_checkpoint_cursor(pg_url, tmp_path):
    game, rng = get_game("tictactoe"), np.random.default_rng(4)
    with PgReplayWriter(pg_url, game) as writer:
        for i in range(15):
            writer.write_game(f"before-{i}", play_game(game, random_move, rng))
    proc = start_daemon(tmp_path, "--db", pg_url, "--steps", "0", "--checkpoint-interval", "10", *FAST)
    try:
        wait_for(lambda: list((tmp_path / "checkpoints").glob("*.pt")), 120, "a checkpoint", proc, tmp_path)
    finally:
        proc.kill()
        proc.wait(30)
    with PgReplayWriter(pg_url, game) as writer:
        for i in range(5):
            writer.write_game(f"after-{i}", play_game(game, random_move, rng))
    with psycopg.connect(pg_url) as conn:
        (total,) = conn.execute("SELECT count(*) FROM transitions").fetchone()
    proc = start_daemon(tmp_path, "--db", pg_url, "--steps", "0", "--checkpoint-interval", "10", *FAST)
    try:
        stats = wait_for(
            lambda: (
                (s := read_stats(tmp_path)) and s["rows_seen"] >= total and s["state"] == "training" and s
            ),
            120,
            "all rows seen after the restart",
            proc,
            tmp_path,
        )
        time.sleep(1.0)
        assert read_stats(tmp_path)["rows_seen"] == total  # every row once, across the kill
        assert stats["replay_cursor"] >= total
    finally:
        assert stop(proc) == 0


def test_launcher_hands_a_url_to_its_children_by_environment_not_argv(pg_server, pg_url, tmp_path):
    from trainer.launcher import LauncherConfig, build_children

    specs = build_children(
        LauncherConfig(db=pg_url, data=tmp_path, actors=2, dashboard=False), python="python"
    )
    assert [s.name for s in specs] == ["actor-1", "actor-2", "trainer"]
    assert all(pg_server.password not in " ".join(s.argv) and "--db" not in s.argv for s in specs)
    assert [s.env.get("ACTOR_DB") for s in specs[:2]] == [pg_url, pg_url] and specs[2].env[
        "TRAINER_DB"
    ] == pg_url
    path_specs = build_children(LauncherConfig(data=tmp_path, actors=1, dashboard=False), python="python")
    assert all(s.argv[s.argv.index("--db") + 1] == str(tmp_path.resolve() / "replay.db") for s in path_specs)
