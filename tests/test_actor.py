"""The self-play actor through real parts: SQLite files, onnxruntime, subprocesses, signals
(docs/contract.md section 1, "Writer rules"; section 3, "Actor reload rules")."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from actor_support import actor_cmd, actor_env, assert_whole_games, publish, read_games, tiny_model_bytes

from actor_stub.config import ActorConfig
from actor_stub.process import run_worker


def _run_in_process(tmp_path: Path, env_id: str, **kw) -> dict:
    cfg = ActorConfig(env_id=env_id, db=tmp_path / "replay.db", model_dir=tmp_path / "models", **kw)
    run_worker(cfg, cfg.episodes, cfg.seed, 0, threading.Event())
    return read_games(cfg.db, env_id)


@pytest.mark.parametrize("env_id, sims", [("tictactoe", 16), ("connect4", 8)])
def test_rows_read_back_as_whole_games_without_model(tmp_path, env_id, sims):
    games = _run_in_process(tmp_path, env_id, sims=sims, episodes=6, parallel_games=4, seed=1)
    assert len(games) == 6
    assert_whole_games(games, env_id)
    rows = [r for g in games.values() for r in g]
    assert all(r["model_step"] is None for r in rows)
    # MCTS visit distributions, not one-hots or uniform: the targets carry search information.
    assert any(np.count_nonzero(r["policy_probs"]) > 1 for r in rows)
    conn = sqlite3.connect(tmp_path / "replay.db")
    meta = conn.execute(
        "SELECT obs_size, num_actions, legal_mask_offset FROM game_metadata WHERE env_id=?", (env_id,)
    ).fetchone()
    assert meta == {"tictactoe": (29, 9, 18), "connect4": (93, 7, 84)}[env_id]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_random_play_writes_uniform_policy(tmp_path):
    games = _run_in_process(tmp_path, "tictactoe", sims=0, episodes=3, seed=2)
    assert_whole_games(games, "tictactoe")
    first = next(iter(games.values()))[0]
    np.testing.assert_allclose(first["policy_probs"], np.full(9, 1 / 9), rtol=1e-6)


def test_model_rows_carry_the_model_step(tmp_path):
    publish(tmp_path / "models", tiny_model_bytes("tictactoe", step=42))
    games = _run_in_process(tmp_path, "tictactoe", sims=8, episodes=4, seed=3)
    assert_whole_games(games, "tictactoe")
    assert {r["model_step"] for g in games.values() for r in g} == {42}


def test_wrong_game_model_is_refused_and_rollouts_used(tmp_path, caplog):
    # An in-process command run earlier in the session may have left the root logger at ERROR.
    caplog.set_level(logging.WARNING)
    publish(tmp_path / "models", tiny_model_bytes("connect4", step=9))
    games = _run_in_process(tmp_path, "tictactoe", sims=4, episodes=2, seed=4)
    assert {r["model_step"] for g in games.values() for r in g} == {None}
    assert "env_id 'connect4'" in caplog.text


@pytest.mark.parametrize("env_id, sims, episodes", [("tictactoe", 8, 6), ("connect4", 4, 3)])
def test_actor_rows_are_read_back_by_the_trainers_reader(tmp_path, env_id, sims, episodes):
    """The actor process and the trainer's ReplayReader agree on every row: none is skipped
    as bad and the decoded arrays are the values the actor wrote."""
    from trainer.games import get_game
    from trainer.replay.codec import decode_f32
    from trainer.replay.reader import ReplayReader

    db = tmp_path / "replay.db"
    out = subprocess.run(
        actor_cmd(
            "--env-id",
            env_id,
            "--db",
            str(db),
            "--model-dir",
            str(tmp_path / "models"),
            "--sims",
            str(sims),
            "--episodes",
            str(episodes),
            "--parallel-games",
            "3",
            "--seed",
            "11",
        ),
        env=actor_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    games = read_games(db, env_id)
    assert len(games) == episodes
    assert_whole_games(games, env_id)
    rows = sum(len(g) for g in games.values())

    spec = get_game(env_id).spec
    a, off = spec.num_actions, spec.legal_mask_offset
    with ReplayReader(db, env_id, chunk_rows=7) as reader:  # several chunks per game
        assert reader.probe(min_rows=rows) is None
        parts = []
        while (chunk := reader.read_new()).scanned:
            parts.append(chunk)
        assert reader.model_step is None  # rollout games: no model produced them
        assert reader.newest_timestamp is not None and abs(reader.newest_timestamp - time.time()) < 120
    assert len(parts) == -(-rows // 7)
    assert sum(sum(p.bad.values()) for p in parts) == 0
    assert sum(p.policy_onehot for p in parts) == 0  # every row carried its own MCTS target
    rowids = np.concatenate([p.rowids for p in parts])
    obs = np.concatenate([p.obs for p in parts])
    policy = np.concatenate([p.policy for p in parts])
    value = np.concatenate([p.value for p in parts])
    assert obs.shape == (rows, spec.obs_size) and obs.dtype == np.float32
    assert policy.shape == (rows, a) and policy.dtype == np.float32 and value.shape == (rows,)
    legal = obs[:, off : off + a] > 0.5
    assert np.allclose(policy.sum(axis=1), 1.0, atol=1e-5) and not policy[~legal].any()
    assert set(np.unique(value).tolist()) <= {-1.0, 0.0, 1.0}

    conn = sqlite3.connect(db)
    raw = conn.execute(
        "SELECT rowid, observation, policy_probs, game_outcome FROM transitions WHERE env_id = ? ORDER BY rowid",
        (env_id,),
    ).fetchall()
    conn.close()
    np.testing.assert_array_equal(rowids, [r[0] for r in raw])
    np.testing.assert_array_equal(
        obs, np.stack([decode_f32(r[1], spec.obs_size, "observation") for r in raw])
    )
    np.testing.assert_allclose(
        policy, np.stack([decode_f32(r[2], a, "policy_probs") for r in raw]), atol=1e-6
    )
    np.testing.assert_array_equal(value, [r[3] for r in raw])


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"actor exited early ({proc.returncode}) waiting for {what}: {proc.stderr.read()}"
            )
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _workers_with_games(db: Path) -> set[str]:
    if not db.exists():
        return set()
    try:
        return {e.rsplit("-ep-", 1)[0][-3:] for e in read_games(db, "tictactoe")}
    except sqlite3.OperationalError:  # tables not created yet
        return set()


def _steps(db: Path) -> set:
    if not db.exists():
        return set()
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return {r[0] for r in conn.execute("SELECT DISTINCT model_step FROM transitions")}
        finally:
            conn.close()
    except sqlite3.OperationalError:  # the actor has not created the table yet
        return set()


def test_hot_reload_keeps_model_on_bad_file_and_sigterm_leaves_whole_games(tmp_path):
    db, models = tmp_path / "replay.db", tmp_path / "models"
    proc = subprocess.Popen(
        actor_cmd(
            "--env-id",
            "tictactoe",
            "--db",
            str(db),
            "--model-dir",
            str(models),
            "--sims",
            "4",
            "--parallel-games",
            "4",
            "--poll-interval",
            "0.3",
            "--seed",
            "5",
            "--episodes",
            "0",
        ),
        env=actor_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: None in _steps(db), 30, proc, "rollout games")
        publish(models, tiny_model_bytes("tictactoe", step=3))
        _wait_for(lambda: 3 in _steps(db), 30, proc, "games with model step 3")
        publish(models, b"not an onnx model")  # a failed load keeps step 3
        time.sleep(1.0)
        publish(models, tiny_model_bytes("tictactoe", step=4, seed=1))
        _wait_for(lambda: 4 in _steps(db), 30, proc, "games with model step 4")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "failed to load" in err and "keeping model step 3" in err
    games = read_games(db, "tictactoe")
    assert_whole_games(games, "tictactoe")
    # Each game was played by one model from its first ply to its last.
    assert all(len({r["model_step"] for r in rows}) == 1 for rows in games.values())


def test_second_sigterm_exits_at_once_with_only_whole_games(tmp_path):
    db = tmp_path / "replay.db"
    proc = subprocess.Popen(
        actor_cmd(
            "--env-id",
            "connect4",
            "--db",
            str(db),
            "--model-dir",
            str(tmp_path / "models"),
            "--sims",
            "30",
            "--parallel-games",
            "8",
            "--seed",
            "6",
        ),
        env=actor_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: None in _steps(db), 60, proc, "first games")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "exiting now" in err
    assert_whole_games(read_games(db, "connect4"), "connect4")


def test_two_actor_processes_and_a_reader_never_hit_a_lock(tmp_path):
    db, models = tmp_path / "replay.db", tmp_path / "models"
    common = [
        "--env-id",
        "tictactoe",
        "--db",
        str(db),
        "--model-dir",
        str(models),
        "--sims",
        "0",
        "--parallel-games",
        "1",
    ]
    procs = [
        subprocess.Popen(
            actor_cmd(*common, "--episodes", "400", "--seed", "7"),
            env=actor_env(),
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            actor_cmd(*common, "--episodes", "400", "--seed", "8", "--workers", "2"),
            env=actor_env(),
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    reader_errors: list[str] = []
    reads = 0
    try:
        while any(p.poll() is None for p in procs):
            if db.exists():
                try:
                    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                    conn.execute("SELECT count(*), max(rowid) FROM transitions").fetchone()
                    conn.close()
                    reads += 1
                except sqlite3.OperationalError as e:
                    if "no such table" not in str(e):
                        reader_errors.append(str(e))
            time.sleep(0.01)
        errs = [p.communicate(timeout=30)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], errs
    assert not reader_errors
    assert reads > 10
    assert not any("locked" in e or "Traceback" in e for e in errs), errs
    games = read_games(db, "tictactoe")
    assert len(games) == 800
    assert_whole_games(games, "tictactoe")


def test_model_watcher_polling_alone_reloads_and_keeps_model_on_failure(tmp_path):
    """Bind mounts carry no file events: mtime polling alone must see a replaced file."""
    from actor_stub.model_watcher import ModelWatcher
    from trainer.games import get_game

    models = tmp_path / "models"
    watcher = ModelWatcher(models, get_game("tictactoe").spec, poll_interval=0.05, use_events=False)
    assert not watcher.maybe_reload() and watcher.policy is None
    publish(models, tiny_model_bytes("tictactoe", step=1))
    time.sleep(0.06)
    assert watcher.maybe_reload() and watcher.policy.step == 1
    publish(models, b"\x00garbage")
    time.sleep(0.06)
    assert not watcher.maybe_reload() and watcher.policy.step == 1
    time.sleep(0.06)
    assert not watcher.maybe_reload()  # the same bad file is not retried
    publish(models, tiny_model_bytes("tictactoe", step=2))
    time.sleep(0.06)
    assert watcher.maybe_reload() and watcher.policy.step == 2


def test_workers_stop_cleanly_when_the_parent_gets_sigterm(tmp_path):
    db = tmp_path / "replay.db"
    proc = subprocess.Popen(
        actor_cmd(
            "--env-id",
            "tictactoe",
            "--db",
            str(db),
            "--model-dir",
            str(tmp_path / "models"),
            "--sims",
            "4",
            "--workers",
            "2",
            "--seed",
            "9",
        ),
        env=actor_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: _workers_with_games(db) == {"-w0", "-w1"}, 60, proc, "a game from each worker")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.count("finishing the games in flight") == 2  # each worker got it exactly once
    games = read_games(db, "tictactoe")
    assert_whole_games(games, "tictactoe")
    assert {e.rsplit("-ep-", 1)[0][-3:] for e in games} == {"-w0", "-w1"}


# --- a replay DB that cannot be written ---------------------------------------------------------
def _run_actor_to_the_end(db: Path, *extra: str, **popen) -> tuple[int, str]:
    proc = subprocess.run(
        actor_cmd(
            "--env-id",
            "tictactoe",
            "--db",
            str(db),
            "--model-dir",
            str(db.parent / "models"),
            "--sims",
            "0",
            "--parallel-games",
            "4",
            "--seed",
            "3",
            *extra,
        ),
        env=actor_env(),
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        **popen,
    )
    return proc.returncode, proc.stderr


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_file_that_is_not_sqlite_is_one_error_line_and_left_as_it_was(tmp_path, workers):
    db = tmp_path / "replay.db"
    db.write_bytes(b"these are somebody's notes, not a database\n" * 200)
    before = db.read_bytes()
    code, err = _run_actor_to_the_end(db, "--episodes", "4", "--workers", workers)
    assert code == 2, err
    assert "Traceback" not in err, err
    [line] = _error_lines(err)
    assert str(db) in line and "not a database" in line
    assert db.read_bytes() == before


def _limit_file_size(limit: int):
    import resource

    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk.
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_stops_the_actor_with_the_real_cause_and_keeps_the_games(tmp_path):
    db = tmp_path / "replay.db"
    code, err = _run_actor_to_the_end(db, "--episodes", "20")
    assert code == 0, err
    kept = read_games(db, "tictactoe")
    assert len(kept) == 20
    # Room for SQLite's shared-memory index and a few games in the WAL, then the disk is "full".
    code, err = _run_actor_to_the_end(db, preexec_fn=_limit_file_size(db.stat().st_size + 96 * 1024))
    assert code == 2, err
    assert "Traceback" not in err and "no transaction is active" not in err, err
    [line] = _error_lines(err)
    assert str(db) in line and ("full" in line or "I/O error" in line), line
    games = read_games(db, "tictactoe")
    assert_whole_games(games, "tictactoe")
    assert set(kept) <= set(games)


def test_a_read_only_db_is_one_error_line(tmp_path):
    import os
    import shutil

    db = tmp_path / "replay.db"
    assert _run_actor_to_the_end(db, "--episodes", "2")[0] == 0
    kept = read_games(db, "tictactoe")
    # Root ignores file modes; an immutable file is read-only even to root.
    as_root = os.geteuid() == 0
    if as_root:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: no way to make a file read-only")
    else:
        db.chmod(0o444)
    try:
        code, err = _run_actor_to_the_end(db, "--episodes", "2")
    finally:
        if as_root:
            subprocess.run([chattr, "-i", str(db)], check=True)
    assert code == 2, err
    assert "Traceback" not in err, err
    [line] = _error_lines(err)
    assert str(db) in line and "readonly" in line, line
    assert list(read_games(db, "tictactoe")) == list(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_stop_by_themselves_when_the_parent_is_killed_outright(tmp_path):
    import os

    db = tmp_path / "replay.db"
    proc = subprocess.Popen(
        actor_cmd(
            "--env-id",
            "tictactoe",
            "--db",
            str(db),
            "--model-dir",
            str(tmp_path / "models"),
            "--sims",
            "4",
            "--workers",
            "2",
            "--seed",
            "10",
        ),
        env=actor_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list[int] = []
    try:
        _wait_for(lambda: _workers_with_games(db) == {"-w0", "-w1"}, 60, proc, "a game from each worker")
        workers = [
            int(p)
            for p in subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        assert len(workers) >= 2, workers
        proc.kill()  # no chance to forward a stop to its workers
        proc.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert_whole_games(read_games(db, "tictactoe"), "tictactoe")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
