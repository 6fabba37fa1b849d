"""The daemon as users run it: a real process beside a real writer, signals, kill -9, resume."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
from daemon_harness import (
    DAEMON_FAST,
    REPO,
    read_stats,
    start_daemon,
    stop,
    tail_log,
    wait_for,
    wait_for_step,
)
from replay_data import write_random_games

from trainer.commands.train import schedule_from
from trainer.config import DaemonConfig
from trainer.training.run import run_to_end
from trainer.training.state import load_checkpoint_file

FAST = DAEMON_FAST

WRITER = r"""
import random, sys, time
from trainer.games import get_game
from trainer.replay.writer import PlyRecord, ReplayWriter
import os
db, stop_file, seed, journal = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
game = get_game("tictactoe"); rng = random.Random(seed)
# No retries beyond SQLite's own busy timeout, like the field's Rust actor: any lock the
# daemon holds for more than 5 s surfaces here as "database is locked".
w = ReplayWriter(db, game, busy_timeout_s=5.0, max_retries=0, journal_mode=journal)
end, n = time.time() + 300, 0  # the test ends it with stop_file; 300 s is a safety net
while time.time() < end and not os.path.exists(stop_file):
    s, plies = game.initial_state(), []
    while not s.is_terminal:
        a = rng.choice(game.legal_actions(s)); plies.append(PlyRecord(s, a, None)); s = game.apply(s, a)
    w.write_game(f"w{seed}-ep-{n}", plies, model_step=None); n += 1
    time.sleep(0.005)
print("games", n)
"""


def onnx_step(path) -> int:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    obs_size = sess.get_inputs()[0].shape[1]
    logits, value = sess.run(None, {"observation": np.zeros((3, obs_size), np.float32)})
    assert logits.shape == (3, 9) and value.shape == (3, 1)
    return int(sess.get_modelmeta().custom_metadata_map["step"])


def assert_contract_types(stats: dict) -> None:
    """The contract keys of stats.json and their JSON types (docs/contract.md section 4)."""
    for key in ("step", "total_steps", "samples_seen", "replay_buffer_size"):
        assert type(stats[key]) is int, key
    for key in ("total_loss", "policy_loss", "value_loss", "learning_rate", "timestamp"):
        assert isinstance(stats[key], float), key
    assert isinstance(stats["last_checkpoint"], str) and isinstance(stats["env_id"], str)
    assert isinstance(stats["history"], list) and isinstance(stats["eval_history"], list)
    for h in stats["history"]:
        assert type(h["step"]) is int and isinstance(h["learning_rate"], float)


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_trains_beside_a_live_writer(tmp_path, journal):
    db, stop_file = tmp_path / "replay.db", tmp_path / "writer.stop"
    write_random_games(db, "tictactoe", 30, seed=1, journal=journal)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(stop_file), "2", journal],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        proc = start_daemon(
            tmp_path, "--steps", "0", "--checkpoint-interval", "100", "--max-checkpoints", "2", *FAST
        )
        rows_before = wait_for_step(tmp_path, 1, 60, proc)["rows_seen"]
        wait_for(
            lambda: (s := read_stats(tmp_path)) and s["step"] >= 300 and s["rows_seen"] > rows_before + 200,
            90,
            "300 steps and rows written during training picked up",
            proc,
            tmp_path,
        )
        assert stop(proc) == 0, tail_log(tmp_path)
    finally:
        stop_file.touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and "locked" not in err, err
    stats = read_stats(tmp_path)
    assert stats["state"] == "stopped" and stats["bad_rows"] == 0
    # The window is the newest rows (it tails the writer), filled to its size.
    assert stats["window_rows"] == min(stats["window_size"], stats["rows_seen"])
    assert_contract_types(stats)
    step = onnx_step(tmp_path / "models" / "latest.onnx")
    assert step == stats["step"]
    published = sorted(p.name for p in (tmp_path / "models").glob("model_step_*.onnx"))
    assert len(published) == 2 and published[-1] == f"model_step_{step:06d}.onnx"
    assert stats["last_checkpoint"].endswith(published[-1])


def test_sigterm_finishes_step_saves_publishes_and_exits_0(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=3)
    proc = start_daemon(tmp_path, "--steps", "0", "--checkpoint-interval", "1000", *FAST)
    wait_for_step(tmp_path, 30, 60, proc)
    t0 = time.monotonic()
    assert stop(proc, signal.SIGTERM, timeout=20) == 0, tail_log(tmp_path)
    assert time.monotonic() - t0 < 10
    stats = read_stats(tmp_path)
    assert stats["state"] == "stopped"
    ckpt = load_checkpoint_file(tmp_path / "checkpoints" / "latest.pt")
    assert ckpt.step == stats["step"] == onnx_step(tmp_path / "models" / "latest.onnx")


def test_kill9_never_breaks_latest_and_resume_keeps_the_lr(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 60, seed=4)
    sched = [
        "--steps",
        "0",
        "--lr-warmup-steps",
        "150",
        "--lr-decay-steps",
        "1500",
        "--checkpoint-interval",
        "40",
    ]
    rng = random.Random(0)
    resumed_at = 0
    latest = tmp_path / "models" / "latest.onnx"
    for _attempt in range(4):
        proc = start_daemon(tmp_path, *sched, *FAST)
        # Kill while this run trains and publishes (every 40 steps, many times a second),
        # not while it is still starting up, and once the folder holds a model to break (the
        # first run's first publish loads onnx, so it can end a few steps after it began).
        wait_for_step(tmp_path, resumed_at + 45, 60, proc)
        wait_for(lambda: latest.exists(), 60, "the first published model", proc, tmp_path)
        time.sleep(rng.uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        onnx_step(latest)  # loadable whatever the moment
        ckpt_step = load_checkpoint_file(tmp_path / "checkpoints" / "latest.pt").step
        assert ckpt_step >= resumed_at + 40, "the killed run saved no checkpoint of its own"
        resumed_at = ckpt_step
    assert ckpt_step > 0
    proc = start_daemon(tmp_path, *sched, *FAST)
    wait_for_step(tmp_path, ckpt_step + 60, 60, proc)
    assert stop(proc) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert f"at step {ckpt_step} " in log.split("resumed from")[-1].splitlines()[0]
    # Every LR recorded across all the restarts is exactly the uninterrupted schedule's.
    schedule = schedule_from(DaemonConfig(lr_warmup_steps=150, lr_decay_steps=1500, steps=0))
    history = read_stats(tmp_path)["history"]
    assert len(history) > 10 and history[-1]["step"] > 150
    # The chart spans every run, not just the last one.
    assert history[0]["step"] <= 10, history[:3]
    for entry in history:
        assert entry["learning_rate"] == pytest.approx(schedule(entry["step"] - 1), rel=1e-6), entry


def test_waits_for_missing_db_then_gives_up_with_exit_2(tmp_path):
    proc = start_daemon(tmp_path, "--max-wait", "3", "--wait-interval", "0.2", *FAST)
    stats = wait_for(
        lambda: (s := read_stats(tmp_path)) and s.get("state") == "waiting_for_data" and s,
        30,
        "waiting_for_data",
        proc,
        tmp_path,
    )
    assert stats["state_reason"]
    assert proc.wait(30) == 2
    assert "error:" in tail_log(tmp_path) and "Traceback" not in tail_log(tmp_path)
    final = read_stats(tmp_path)
    assert final["state"] == "stopped" and "--max-wait" in final["state_reason"]


def test_starts_when_the_db_appears(tmp_path):
    proc = start_daemon(tmp_path, "--steps", "20", "--wait-interval", "0.2", *FAST)
    wait_for(
        lambda: (s := read_stats(tmp_path)) and s.get("state") == "waiting_for_data",
        30,
        "waiting",
        proc,
        tmp_path,
    )
    write_random_games(tmp_path / "replay.db", "tictactoe", 20, seed=5)
    assert proc.wait(90) == 0, tail_log(tmp_path)
    assert read_stats(tmp_path)["step"] == 20


def test_schema_problem_is_a_clear_error(tmp_path):
    conn = sqlite3.connect(tmp_path / "replay.db")
    conn.execute("CREATE TABLE transitions (id TEXT PRIMARY KEY, env_id TEXT, action BLOB)")
    conn.execute("INSERT INTO transitions VALUES ('a', 'tictactoe', x'00000000')")
    conn.commit()
    conn.close()
    proc = start_daemon(tmp_path, "--max-wait", "20", *FAST)
    assert proc.wait(60) == 2
    log = tail_log(tmp_path)
    assert "observation" in log and "Traceback" not in log


def test_incompatible_checkpoint_is_an_error_unless_fresh(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 20, seed=6)
    write_random_games(tmp_path / "replay.db", "connect4", 10, seed=6)
    assert start_daemon(tmp_path, "--steps", "10", *FAST).wait(90) == 0
    args = ["--env-id", "connect4", "--net", "mlp", "--steps", "5", *FAST]
    assert start_daemon(tmp_path, *args).wait(90) == 2
    assert re.search(r"checkpoint .* is for env_id 'tictactoe'", tail_log(tmp_path))
    assert start_daemon(tmp_path, *args, "--fresh").wait(90) == 0
    assert read_stats(tmp_path)["env_id"] == "connect4"


def test_periodic_eval_lands_in_stats_with_contract_types(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=7)
    proc = start_daemon(
        tmp_path,
        "--steps",
        "0",
        "--checkpoint-interval",
        "20",
        "--eval-interval",
        "20",
        "--eval-games",
        "20",
        *FAST,
    )
    stats = wait_for(
        lambda: (s := read_stats(tmp_path)) and s.get("last_eval") and s, 60, "an evaluation", proc, tmp_path
    )
    assert stop(proc) == 0
    entry = stats["last_eval"]
    assert type(entry["step"]) is int and type(entry["games_played"]) is int and entry["games_played"] == 20
    assert entry["step"] % 20 == 0 and entry["step"] > 0
    assert abs(entry["win_rate"] + entry["draw_rate"] + entry["loss_rate"] - 1) < 1e-9
    assert stats["eval_history"][-1] == entry
    # Evaluations survive a restart.
    proc = start_daemon(tmp_path, "--steps", "0", "--checkpoint-interval", "20", *FAST)
    restarted = wait_for(
        lambda: (s := read_stats(tmp_path)) and s["state"] == "training" and s, 60, "restart", proc, tmp_path
    )
    assert stop(proc) == 0
    assert (
        restarted["eval_history"] and restarted["eval_history"][0]["step"] == stats["eval_history"][0]["step"]
    )


def test_daemon_starts_from_an_offline_bc_checkpoint(tmp_path):
    data = tmp_path / "games.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "actor_stub.generate",
            "--env-id",
            "tictactoe",
            "--games",
            "60",
            "--teacher",
            "perfect",
            "--output",
            str(data),
            "--seed",
            "1",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    bc = tmp_path / "bc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "bc",
            "--data",
            str(data),
            "--epochs",
            "2",
            "--model-dir",
            str(bc / "models"),
            "--checkpoint-dir",
            str(bc / "checkpoints"),
            "--stats",
            str(bc / "stats.json"),
            "--no-progress",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    write_random_games(tmp_path / "replay.db", "tictactoe", 20, seed=8)
    init = bc / "checkpoints" / "latest.pt"
    proc = start_daemon(tmp_path, "--steps", "5", "--init-from", str(init), *FAST)
    assert proc.wait(90) == 0, tail_log(tmp_path)
    # Five Adam steps move each weight by at most about 5 * lr; a net not loaded from the BC
    # run would differ from it by the size of the weights themselves.
    bc_net = load_checkpoint_file(init).objective["net"]
    daemon = load_checkpoint_file(tmp_path / "checkpoints" / "latest.pt")
    assert daemon.mode == "daemon" and daemon.step == 5
    lr = DaemonConfig().lr
    for name, weights in daemon.objective["net"].items():
        if "running_" not in name and weights.is_floating_point():  # batch-norm statistics are not trained
            assert (weights - bc_net[name]).abs().max() <= 10 * lr, name


def test_corrupt_rows_are_skipped_and_shown_in_stats(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 30, seed=9)
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT * FROM transitions LIMIT 1").fetchone()
    cols = [c[1] for c in conn.execute("PRAGMA table_info(transitions)")]
    bad = dict(zip(cols, row))
    for i, (field, value) in enumerate(
        [
            ("observation", b"\x00" * 7),
            ("observation", np.full(29, np.nan, np.float32).tobytes()),
            ("action", b"\x01"),
        ]
    ):
        r = dict(bad, id=f"bad-{i}", **{field: value})
        conn.execute(
            f"INSERT INTO transitions ({', '.join(r)}) VALUES ({', '.join('?' * len(r))})", tuple(r.values())
        )
    conn.commit()
    conn.close()
    assert start_daemon(tmp_path, "--steps", "10", *FAST).wait(90) == 0, tail_log(tmp_path)
    stats = read_stats(tmp_path)
    assert stats["bad_rows"] == 3 and type(stats["bad_rows"]) is int


def test_sigint_stops_cleanly_and_a_second_signal_exits_at_once(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=10)
    proc = start_daemon(tmp_path, "--steps", "0", "--checkpoint-interval", "1000", *FAST)
    wait_for_step(tmp_path, 20, 60, proc)
    assert stop(proc, signal.SIGINT, timeout=20) == 0, tail_log(tmp_path)
    first = read_stats(tmp_path)
    assert first["state"] == "stopped" and first["state_reason"] == "SIGINT"
    assert load_checkpoint_file(tmp_path / "checkpoints" / "latest.pt").step == first["step"]

    # The first signal starts the final save; the second must not wait for it.
    proc = start_daemon(tmp_path, "--steps", "0", "--checkpoint-interval", "1000", *FAST)
    wait_for_step(tmp_path, first["step"] + 20, 60, proc)
    # Two different signals: two pending SIGTERMs would merge into one delivery.
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) in (128 + signal.SIGTERM, 128 + signal.SIGINT)
    assert re.search(r"second SIG(TERM|INT): exiting immediately", tail_log(tmp_path))


def test_stats_extras_and_progress_log(tmp_path):
    """The figures the dashboard shows beyond the contract, with their types, and the log line."""
    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=11)
    proc = start_daemon(
        tmp_path, "--steps", "120", "--checkpoint-interval", "50", "--log-interval", "40", *FAST[:-2]
    )
    assert proc.wait(90) == 0, tail_log(tmp_path)
    stats = read_stats(tmp_path)
    assert_contract_types(stats)
    floats = (
        "samples_per_sec",
        "steps_per_sec",
        "wait_fraction",
        "new_rows_per_sec",
        "reuse_ratio",
        "policy_entropy",
        "grad_norm",
        "last_publish_seconds",
        "rss_mb",
    )
    for key in floats:
        assert isinstance(stats[key], float), (key, stats[key])
    for key in ("window_size", "rows_seen", "bad_rows", "publish_failures", "models_published"):
        assert type(stats[key]) is int, (key, stats[key])
    assert stats["samples_per_sec"] > 0 and 0 <= stats["wait_fraction"] <= 1
    assert stats["policy_entropy"] > 0 and stats["grad_norm"] > 0 and stats["rss_mb"] > 10
    assert (
        stats["last_publish_seconds"] > 0
        and stats["models_published"] == 3
        and stats["publish_failures"] == 0
    )
    assert stats["trainer_version"] and stats["state_reason"] == "reached --steps 120"
    lines = [ln for ln in tail_log(tmp_path, lines=400).splitlines() if re.search(r" step \d+/120 loss", ln)]
    assert [int(re.search(r"step (\d+)/", ln).group(1)) for ln in lines] == [40, 80, 120]
    assert re.search(r"lr \S+ \| \d+ samples/s \S+ steps/s wait \d+% \| window \d+ rows \d+", lines[-1]), (
        lines[-1]
    )


def test_every_state_change_reaches_stats_json_at_once(tmp_path):
    """starting -> training -> publishing (the final model) -> stopped, each on disk when it happens."""
    from trainer.commands.train import build_daemon
    from trainer.hooks.base import Hook

    class DiskWitness(Hook):
        name = "disk_witness"

        def __init__(self):
            self.seen: list[tuple[str, str]] = []

        def on_phase(self, loop):  # runs after StatsHook.on_phase: the file must already say so
            self.seen.append((loop.phase, read_stats(tmp_path)["state"]))

    write_random_games(tmp_path / "replay.db", "tictactoe", 30, seed=12)
    cfg = DaemonConfig(
        db=tmp_path / "replay.db",
        model_dir=tmp_path / "models",
        stats=tmp_path / "stats.json",
        steps=25,
        checkpoint_interval=10,
        min_rows=50,
        max_reuse=0,
        eval_interval=0,
        fresh=True,
    )
    loop = build_daemon(cfg)
    witness = DiskWitness()
    loop.hooks.append(witness)
    run_to_end(loop)
    phases = [p for p, _ in witness.seen]
    assert all(p == on_disk for p, on_disk in witness.seen), witness.seen
    assert phases[-2:] == ["publishing", "stopped"], phases
    assert "training" in phases
    final = read_stats(tmp_path)
    assert final["state"] == "stopped" and final["last_checkpoint"].endswith("model_step_000025.onnx")

    # Resumed at step 25 (whose model the stop published after the checkpoint was saved):
    # nothing to publish again, and stats.json names the step file that exists.
    loop = build_daemon(cfg.model_copy(update={"fresh": False, "steps": 25}))
    run_to_end(loop)
    final = read_stats(tmp_path)
    assert final["step"] == 25 and final["last_checkpoint"].endswith("model_step_000025.onnx")
