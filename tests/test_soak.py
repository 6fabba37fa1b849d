"""Soak: the daemon trains for minutes beside writers that are killed, and is killed itself.

Two writer processes share one rollback-journal replay DB, as the family's Rust actor
leaves it: one is SIGKILLed every ~20 s (often mid-transaction, with pages spilled, so a hot
journal is left for the next writer to roll back) and restarted; the other writes
throughout. The second writer stays in rollback-journal mode as well: a WAL writer would
switch the file to WAL, after which no kill could leave a hot journal. It writes a game
about every half second and the killed one restarts after 1-3 s, so a hot journal stays for
up to half a second (until the next writer's transaction rolls it back), long enough for the
daemon's reads to meet it. The daemon is
SIGKILLed twice and restarted. Throughout, the daemon must never exit on its own and every
`latest.onnx` must load; at the end no committed row is missing from the DB and a resume
continues the uninterrupted LR schedule.

    python -m pytest -m slow tests/test_soak.py -s        # SOAK_SECONDS=600 by default
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from daemon_harness import REPO, read_stats, start_daemon, stop, tail_log, wait_for_step
from replay_data import write_random_games

from trainer.commands.train import schedule_from
from trainer.config import DaemonConfig

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
WRITER_KILL_EVERY = 20.0
SCHEDULE = ["--steps", "0", "--lr-warmup-steps", "200", "--lr-decay-steps", "20000"]
DAEMON_ARGS = [
    *SCHEDULE,
    "--threads",
    "1",
    "--min-rows",
    "100",
    "--max-reuse",
    "0",
    "--checkpoint-interval",
    "50",
    "--max-checkpoints",
    "3",
    "--stats-interval",
    "10",
    "--eval-interval",
    "0",
]

# Several games per transaction and a 2-page cache, so the transaction spills pages into the
# DB file before COMMIT: a kill then leaves a hot journal. The ledger line is written only
# after COMMIT returns, so every game in the ledger must be in the DB.
WRITER = r"""
import os, random, sqlite3, sys, time
from trainer.games import get_game
from trainer.replay.schema import INSERT_TRANSITION
from trainer.replay.writer import PlyRecord, ReplayWriter, game_rows
db, ledger_path, name, stop_file, spill = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
game, rng = get_game("tictactoe"), random.Random(name)
w = ReplayWriter(db, game, with_model_step=False, journal_mode="delete", busy_timeout_s=10.0)
if spill:
    w.conn.execute("PRAGMA cache_size=2")
sql = INSERT_TRANSITION.format(extra="", extra_q="")
ledger = open(ledger_path, "a")
n = 0
while not os.path.exists(stop_file):
    games = []
    for _ in range(8 if spill else 1):
        s, plies = game.initial_state(), []
        while not s.is_terminal:
            a = rng.choice(game.legal_actions(s)); plies.append(PlyRecord(s, a, None)); s = game.apply(s, a)
        games.append((f"{name}-{os.getpid()}-{n}", plies)); n += 1
    def insert():
        w.conn.execute("BEGIN IMMEDIATE")
        try:
            for episode_id, plies in games:
                w.conn.executemany(sql, game_rows(game, episode_id, plies))
                time.sleep(0.05 if spill else 0.0)
            w.conn.execute("COMMIT")
        except BaseException:
            w.conn.execute("ROLLBACK")
            raise
    w._retry(insert)
    for episode_id, plies in games:
        ledger.write(f"{episode_id} {len(plies)}\n")
    ledger.flush()
    time.sleep(0.05 if spill else 0.4)
"""


def start_writer(tmp: Path, name: str, spill: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            str(tmp / "replay.db"),
            str(tmp / f"{name}.ledger"),
            name,
            str(tmp / "writers.stop"),
            "1" if spill else "0",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"{name}.err", "ab"),
    )


def check_model(path: Path) -> int:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, value = sess.run(None, {"observation": np.zeros((2, sess.get_inputs()[0].shape[1]), np.float32)})
    assert np.isfinite(logits).all() and np.isfinite(value).all()
    return int(sess.get_modelmeta().custom_metadata_map["step"])


def test_soak_killed_writers_and_daemon(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 40, seed=0, journal="delete")
    rng = random.Random(0)
    steady = start_writer(tmp_path, "steady", spill=False)
    killed = start_writer(tmp_path, "killed", spill=True)
    daemon = start_daemon(tmp_path, *DAEMON_ARGS)
    t_start = time.monotonic()
    daemon_kills_at = [SOAK_SECONDS / 3, 2 * SOAK_SECONDS / 3]
    writer_kills = daemon_kills = models_checked = 0
    next_writer_kill = t_start + rng.uniform(0.75, 1.25) * WRITER_KILL_EVERY
    restart_writer_at = 0.0
    last_model_mtime = 0.0
    try:
        wait_for_step(tmp_path, 1, 120, daemon)
        while (now := time.monotonic()) - t_start < SOAK_SECONDS:
            assert daemon.poll() is None, (
                f"daemon exited on its own ({daemon.returncode})\n{tail_log(tmp_path)}"
            )
            assert steady.poll() is None, (tmp_path / "steady.err").read_text()[-2000:]
            if killed is not None and now >= next_writer_kill:
                killed.send_signal(signal.SIGKILL)
                killed.wait(10)
                writer_kills += 1
                killed, restart_writer_at = None, now + rng.uniform(1.0, 3.0)
            if killed is None and now >= restart_writer_at:
                killed = start_writer(tmp_path, "killed", spill=True)
                next_writer_kill = now + rng.uniform(0.75, 1.25) * WRITER_KILL_EVERY
            if daemon_kills_at and now - t_start >= daemon_kills_at[0]:
                daemon_kills_at.pop(0)
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(10)
                daemon_kills += 1
                if (tmp_path / "models" / "latest.onnx").exists():  # short runs may not have published yet
                    check_model(tmp_path / "models" / "latest.onnx")
                daemon = start_daemon(tmp_path, *DAEMON_ARGS)
            model = tmp_path / "models" / "latest.onnx"
            if model.exists() and model.stat().st_mtime != last_model_mtime:
                last_model_mtime = model.stat().st_mtime
                check_model(model)
                models_checked += 1
            time.sleep(0.2)
        stats_before_stop = read_stats(tmp_path)
        assert stop(daemon, timeout=60) == 0, tail_log(tmp_path)
    finally:
        (tmp_path / "writers.stop").touch()
        if killed is not None:
            killed.send_signal(signal.SIGKILL)
        for proc in (p for p in (steady, killed, daemon) if p is not None):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    final = read_stats(tmp_path)
    assert final["state"] == "stopped"
    assert check_model(tmp_path / "models" / "latest.onnx") == final["step"]

    # Any writer's next open rolls back the last killed writer's hot journal.
    conn = sqlite3.connect(db, timeout=30)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    in_db = dict(conn.execute("SELECT episode_id, COUNT(*) FROM transitions GROUP BY episode_id").fetchall())
    total_rows = conn.execute("SELECT COUNT(*) FROM transitions").fetchone()[0]
    conn.close()
    ledger = {}
    for name in ("steady", "killed"):
        for line in (tmp_path / f"{name}.ledger").read_text().splitlines():
            episode_id, rows = line.split()
            ledger[episode_id] = int(rows)
    missing = {e: n for e, n in ledger.items() if in_db.get(e) != n}
    assert not missing, f"{len(missing)} committed games lost or partial"

    # A resume continues the uninterrupted schedule exactly.
    resumed_at = final["step"]
    daemon = start_daemon(tmp_path, *DAEMON_ARGS)
    try:
        wait_for_step(tmp_path, resumed_at + 30, 120, daemon)
    finally:
        assert stop(daemon, timeout=60) == 0
    schedule = schedule_from(DaemonConfig(lr_warmup_steps=200, lr_decay_steps=20000, steps=0))
    resumed = [h for h in read_stats(tmp_path)["history"] if h["step"] > resumed_at]
    assert resumed
    for entry in resumed:
        assert entry["learning_rate"] == pytest.approx(schedule(entry["step"] - 1), rel=1e-6), entry

    summary = {
        "seconds": SOAK_SECONDS,
        "writer_kills": writer_kills,
        "daemon_kills": daemon_kills,
        "committed_games": len(ledger),
        "rows_in_db": total_rows,
        "rows_seen_by_daemon": final.get("rows_seen"),
        "bad_rows": final.get("bad_rows"),
        "steps": final["step"],
        "models_checked": models_checked,
        "stats_before_stop_state": stats_before_stop and stats_before_stop.get("state"),
    }
    print("soak:", json.dumps(summary))
    # A kill cycle is at most 1.25 periods plus a 3 s restart delay.
    assert writer_kills >= max(1, int(SOAK_SECONDS / (1.25 * WRITER_KILL_EVERY + 3))) and daemon_kills == 2
    assert final["rows_seen"] >= total_rows * 0.9
