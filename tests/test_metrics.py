"""Prometheus endpoints of the real daemon and actor processes, scraped over HTTP and parsed
with prometheus_client's own parser: the family's metric names, counters that only grow,
values equal to stats.json (or the replay DB) at the same moment, off unless asked, and one
clear error for a busy port."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

from actor_support import actor_cmd, actor_env, publish, tiny_model_bytes
from daemon_harness import (
    REPO,
    daemon_args,
    read_stats,
    start_daemon,
    stop,
    tail_log,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families
from replay_data import write_random_games

TRAINER_NAMES = {
    "trainer_training_step",
    "trainer_loss_total",
    "trainer_loss_value",
    "trainer_loss_policy",
    "trainer_learning_rate",
    "trainer_step_duration_seconds",
    "trainer_samples_processed_total",
    "trainer_samples_per_second",
    "trainer_steps_per_second",
    "trainer_replay_buffer_size",
    "trainer_checkpoints_saved_total",
    "trainer_checkpoint_duration_seconds",
    "trainer_eval_win_rate",
    "trainer_eval_draw_rate",
    "trainer_eval_games_total",
    "trainer_evaluation_duration_seconds",
    "trainer_info",
    "trainer_wait_fraction",
    "trainer_window_rows",
    "trainer_reuse_ratio",
    "trainer_publish_failures_total",
    "trainer_bad_rows_total",
    "trainer_state",
}
ACTOR_NAMES = {
    "actor_episodes_total",
    "actor_player1_wins_total",
    "actor_player2_wins_total",
    "actor_draws_total",
    "actor_episodes_per_second",
    "actor_episode_duration_seconds_count",
    "actor_episode_steps_count",
    "actor_mcts_searches_total",
    "actor_mcts_inference_seconds_count",
    "actor_mcts_search_seconds_count",
    "actor_mcts_simulations_per_search_count",
    "actor_transitions_stored_total",
    "actor_db_write_seconds_count",
    "actor_model_reloads_total",
    "actor_model_load_seconds_count",
    "actor_model_loaded",
    "actor_memory_rss_bytes",
    "actor_info",
}

Samples = dict[tuple[str, frozenset], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def counters(samples: Samples) -> dict:
    return {k: v for k, v in samples.items() if k[0].endswith(("_total", "_count", "_sum"))}


def assert_counters_grew(before: Samples, after: Samples) -> None:
    for key, v in counters(before).items():
        assert after[key] >= v, (key, v, after[key])


def start_actor(data: Path, *args: str) -> subprocess.Popen:
    with open(data / "actor.log", "wb") as log:  # the child keeps its own handle
        return subprocess.Popen(
            actor_cmd(*args), cwd=REPO, env=actor_env(), stdout=log, stderr=subprocess.STDOUT
        )


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on: its socket inodes matched against /proc/net/tcp*."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_daemon_metrics_have_the_family_names_grow_and_equal_stats_json(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 60, seed=21)
    port = free_port()
    # The reuse limit makes the daemon train a while, then wait for rows that never come:
    # a run that goes through training, publishing and evaluation, then holds still. An
    # evaluation needs a published model, and the first publish runs beside the training
    # steps, so it comes early enough to be done before the last evaluation is due.
    proc = start_daemon(
        tmp_path,
        "--steps",
        "0",
        "--batch-size",
        "16",
        "--max-reuse",
        "2",
        "--min-rows",
        "50",
        "--checkpoint-interval",
        "10",
        "--eval-interval",
        "10",
        "--eval-games",
        "10",
        "--stats-interval",
        "5",
        "--threads",
        "1",
        "--metrics-port",
        str(port),
    )
    try:
        early = wait_for(lambda: scrape(port), 60, "the metrics endpoint", proc, tmp_path)
        assert TRAINER_NAMES <= names(early), TRAINER_NAMES - names(early)
        assert listening_ports(proc.pid) == {port}  # what the test of the default relies on
        wait_for(
            lambda: (
                (s := read_stats(tmp_path))
                and s["state"] == "waiting_for_data"
                and s["last_eval"]
                and s["step"] > 20
            ),
            90,
            "the reuse limit after an evaluation",
            proc,
            tmp_path,
        )

        def same_moment():
            before, samples, after = read_stats(tmp_path), scrape(port), read_stats(tmp_path)
            return before == after and samples and (before, samples)

        stats, late = wait_for(same_moment, 30, "a scrape between two equal stats.json", proc, tmp_path)
        assert_counters_grew(early, late)
        assert value(late, "trainer_training_step") == stats["step"]
        assert value(late, "trainer_samples_processed_total") == stats["samples_seen"] > 0
        for name, key in [
            ("trainer_loss_total", "total_loss"),
            ("trainer_loss_policy", "policy_loss"),
            ("trainer_loss_value", "value_loss"),
            ("trainer_learning_rate", "learning_rate"),
            ("trainer_samples_per_second", "samples_per_sec"),
            ("trainer_steps_per_second", "steps_per_sec"),
            ("trainer_wait_fraction", "wait_fraction"),
            ("trainer_reuse_ratio", "reuse_ratio"),
            ("trainer_replay_buffer_size", "replay_buffer_size"),
            ("trainer_window_rows", "window_size"),
            ("trainer_checkpoints_saved_total", "models_published"),
            ("trainer_checkpoint_duration_seconds", "last_publish_seconds"),
            ("trainer_publish_failures_total", "publish_failures"),
            ("trainer_evaluation_duration_seconds", "last_eval_seconds"),
        ]:
            assert abs(value(late, name) - stats[key]) <= 1e-9 * max(1.0, abs(stats[key])), (name, key)
        assert value(late, "trainer_checkpoints_saved_total") >= 1
        assert value(late, "trainer_eval_win_rate") == stats["last_eval"]["win_rate"]
        assert value(late, "trainer_eval_draw_rate") == stats["last_eval"]["draw_rate"]
        assert value(late, "trainer_eval_games_total") == sum(
            e["games_played"] for e in stats["eval_history"]
        )
        assert value(late, "trainer_bad_rows_total", kind="obs_length") == stats["bad_rows_obs_length"] == 0
        assert value(late, "trainer_state", trainer_state="waiting_for_data") == 1
        assert value(late, "trainer_state", trainer_state="training") == 0
        assert value(late, "trainer_info", env_id="tictactoe", device="cpu", batch_size="16") == 1
    finally:
        assert stop(proc) == 0, tail_log(tmp_path)


def test_daemon_serves_nothing_unless_asked(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 30, seed=22)
    proc = start_daemon(
        tmp_path,
        "--steps",
        "0",
        "--min-rows",
        "50",
        "--max-reuse",
        "0",
        "--threads",
        "1",
        "--eval-interval",
        "0",
    )
    try:
        wait_for(
            lambda: (s := read_stats(tmp_path)) and s["state"] == "training", 60, "training", proc, tmp_path
        )
        assert listening_ports(proc.pid) == set()
    finally:
        assert stop(proc) == 0, tail_log(tmp_path)


def test_a_busy_port_is_one_clear_error_before_any_waiting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # No replay DB: without the early check the daemon would wait for it.
        daemon = subprocess.run(
            daemon_args(tmp_path, "--metrics-port", str(port)),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        actor = subprocess.run(
            actor_cmd(
                "--db",
                str(tmp_path / "actor.db"),
                "--model-dir",
                str(tmp_path / "models"),
                "--episodes",
                "1",
                "--sims",
                "2",
                "--metrics-port",
                str(port),
            ),
            cwd=REPO,
            env=actor_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    for r in (daemon, actor):
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2, r.stderr
        assert len(errors) == 1 and f"--metrics-port {port}" in errors[0], r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "stats.json").exists()


def test_actor_metrics_have_the_family_names_grow_and_equal_the_replay_db(tmp_path):
    db, models, port = tmp_path / "replay.db", tmp_path / "models", free_port()
    proc = start_actor(
        tmp_path,
        "--db",
        str(db),
        "--model-dir",
        str(models),
        "--sims",
        "4",
        "--parallel-games",
        "4",
        "--poll-interval",
        "0.2",
        "--actor-id",
        "metrics-test",
        "--metrics-port",
        str(port),
    )
    try:
        early = wait_for(
            lambda: (s := scrape(port)) and value(s, "actor_episodes_total") > 0 and s,
            60,
            "a first game",
            proc,
            tmp_path,
            "actor.log",
        )
        assert ACTOR_NAMES <= names(early), ACTOR_NAMES - names(early)
        assert value(early, "actor_model_loaded") == 0
        assert value(early, "actor_info", game="tictactoe", actor_id="metrics-test") == 1
        publish(models, tiny_model_bytes("tictactoe", step=7))
        late = wait_for(
            lambda: (
                (s := scrape(port))
                and value(s, "actor_model_loaded") == 1
                and value(s, "actor_mcts_inference_seconds_count") > 0
                and s
            ),
            60,
            "the model in use",
            proc,
            tmp_path,
            "actor.log",
        )
        assert_counters_grew(early, late)
        assert value(late, "actor_model_reloads_total") == value(late, "actor_model_load_seconds_count") == 1
        games = value(late, "actor_episodes_total")
        assert games == sum(
            value(late, f"actor_{k}_total") for k in ("player1_wins", "player2_wins", "draws")
        )
        assert (
            games == value(late, "actor_episode_steps_count") == value(late, "actor_db_write_seconds_count")
        )
        assert value(late, "actor_mcts_searches_total") >= value(
            late, "actor_episode_steps_sum"
        )  # a search per ply
        assert value(late, "actor_mcts_simulations_per_search_sum") == 4 * value(
            late, "actor_mcts_searches_total"
        )
        assert value(late, "actor_memory_rss_bytes") > 10 * 2**20

        def db_counts() -> tuple[int, int]:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                return conn.execute("SELECT COUNT(DISTINCT episode_id), COUNT(*) FROM transitions").fetchone()
            finally:
                conn.close()

        def same_moment():
            before, samples, after = db_counts(), scrape(port), db_counts()
            return before == after and samples and (before, samples)

        # Tic-tac-toe at 4 sims commits a game every few milliseconds and a scrape needs the
        # actor's GIL: on a slow or busy machine a quiet moment can take a while to come.
        (episodes, rows), samples = wait_for(
            same_moment, 120, "a scrape between two equal DB counts", proc, tmp_path, "actor.log"
        )
        assert value(samples, "actor_episodes_total") == episodes
        assert value(samples, "actor_transitions_stored_total") == rows
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, tail_log(tmp_path, "actor.log")


def test_workers_serve_on_consecutive_ports(tmp_path):
    port = free_port()
    proc = start_actor(
        tmp_path,
        "--db",
        str(tmp_path / "replay.db"),
        "--model-dir",
        str(tmp_path / "models"),
        "--sims",
        "2",
        "--workers",
        "2",
        "--actor-id",
        "w",
        "--metrics-port",
        str(port),
    )
    try:
        for i in range(2):
            samples = wait_for(
                lambda i=i: scrape(port + i), 60, f"worker {i}'s endpoint", proc, tmp_path, "actor.log"
            )
            assert value(samples, "actor_info", game="tictactoe", actor_id=f"w-w{i}") == 1
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, tail_log(tmp_path, "actor.log")
