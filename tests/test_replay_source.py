"""ReplaySource through real parts: SQLite files, a writer process, the worker thread."""

import io
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from replay_data import write_random_games

from trainer.config.daemon import DaemonConfig
from trainer.hooks.base import Hook
from trainer.replay.schema import SchemaError
from trainer.sources.replay_source import ReplaySource
from trainer.sources.wait_reason import WaitKind

TESTS_DIR = Path(__file__).parent


def _cfg(db, **kw) -> DaemonConfig:
    base = dict(
        db=db, env_id="tictactoe", batch_size=16, min_rows=20, max_reuse=0, poll_interval=0.02, seed=0
    )
    base.update(kw)
    return DaemonConfig(**base)


def _wait_batch(src: ReplaySource, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (batch := src.next_batch()) is not None:
            return batch
        time.sleep(0.01)
    raise AssertionError(f"no batch within {timeout}s: {src.waiting_reason}")


def _marked(batch) -> int:
    """Samples from one-hot-policy rows (the writer process's marker), ignoring forced moves."""
    legal_count = batch.legal_mask.sum(dim=1)
    return int(((batch.policy.max(dim=1).values == 1.0) & (legal_count > 1)).sum())


def test_batch_shapes_and_consistency(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "connect4", 20, seed=1)
    # The outcome alone as the value target (Connect Four's default mixes in mcts_value).
    src = ReplaySource(_cfg(db, env_id="connect4", batch_size=32, value_target_mix=0.0))
    try:
        b = _wait_batch(src)
        assert b.obs.shape == (32, 93) and b.obs.dtype == torch.float32
        assert b.legal_mask.shape == (32, 7) and b.legal_mask.dtype == torch.bool
        assert torch.equal(b.legal_mask, b.obs[:, 84:91] > 0.5)
        assert torch.all(b.policy[~b.legal_mask] == 0) and torch.allclose(b.policy.sum(1), torch.ones(32))
        assert b.value.shape == (32,) and set(b.value.tolist()) <= {-1.0, 0.0, 1.0}
        stats = src.stats()
        assert stats["rows_seen"] == stats["replay_buffer_size"] > 0 and stats["bad_rows"] == 0
        assert isinstance(stats["window_size"], int) and stats["actor_model_step"] is None
        assert 0 <= stats["newest_row_age_s"] < 60
    finally:
        src.close()


def test_waiting_reasons_until_enough_rows(tmp_path):
    db = tmp_path / "replay.db"
    src = ReplaySource(_cfg(db, min_rows=60))
    try:
        assert src.next_batch() is None and src.waiting_reason.kind == WaitKind.NO_DB
        sqlite3.connect(db).close()
        time.sleep(0.1)
        assert src.next_batch() is None and src.waiting_reason.kind == WaitKind.NO_TABLE
        write_random_games(db, "tictactoe", 1, seed=1, with_model_step=True, model_step=3)
        time.sleep(0.1)
        assert (
            src.next_batch() is None
            and src.waiting_reason.kind == WaitKind.TOO_FEW_ROWS
            and "need 60" in str(src.waiting_reason)
        )
        write_random_games(db, "tictactoe", 10, seed=2, with_model_step=True, model_step=5)
        _wait_batch(src)
        assert src.waiting_reason is None and src.stats()["actor_model_step"] == 5
    finally:
        src.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_live_writer_process_and_source_never_lock_each_other_out(tmp_path, journal):
    db = tmp_path / "replay.db"
    old_rows = write_random_games(db, "tictactoe", 20, seed=1, journal=journal)
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(TESTS_DIR)!r})
        from replay_data import write_games_slowly
        print(write_games_slowly({str(db)!r}, "tictactoe", 150, seed=7, journal={journal!r}, pause_s=0.004))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    src = ReplaySource(_cfg(db, batch_size=32, min_rows=old_rows))
    marked = batches = 0
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            marked += _marked(_wait_batch(src))
            batches += 1
            time.sleep(0.002)  # a training step
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err  # no "database is locked" on the writer's side
        total = old_rows + int(out)
        while src.stats()["rows_seen"] < total and time.monotonic() < deadline:
            marked += _marked(_wait_batch(src))
        stats = src.stats()
        assert stats["rows_seen"] == stats["replay_buffer_size"] == total
        assert stats["bad_rows"] == 0
        for _ in range(20):
            marked += _marked(_wait_batch(src))
        assert marked > 0 and batches > 0  # rows written while we train get sampled
    finally:
        src.close()
        if proc.poll() is None:
            proc.kill()


def test_rollback_lock_held_by_a_writer_is_retried_not_raised(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 10, seed=1, journal="delete")
    src = ReplaySource(_cfg(db))
    try:
        _wait_batch(src)
        before = src.stats()["rows_seen"]
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # what a Rust actor holds while it commits, but longer
        time.sleep(0.4)
        for _ in range(5):  # batches keep coming from the window while the DB is locked
            assert src.next_batch() is not None, src.waiting_reason
        blocker.execute("ROLLBACK")
        blocker.close()
        write_random_games(db, "tictactoe", 5, seed=2, journal="delete")
        deadline = time.monotonic() + 10
        while src.stats()["rows_seen"] == before and time.monotonic() < deadline:
            _wait_batch(src)
        assert src.stats()["rows_seen"] > before and src.stats()["db_busy_retries"] > 0
    finally:
        src.close()


def test_reuse_limit_triggers_and_releases_when_rows_arrive(tmp_path):
    db = tmp_path / "replay.db"
    rows = write_random_games(db, "tictactoe", 10, seed=1)
    src = ReplaySource(_cfg(db, max_reuse=2.0, min_rows=20))
    try:
        n = 0
        _wait_batch(src)
        n += 1
        while src.next_batch() is not None:
            n += 1
        assert src.waiting_reason.kind == WaitKind.REUSE_LIMIT
        assert n == int(2.0 * rows) // 16  # every sample the budget allows, and not one more
        assert src.stats()["reuse_ratio"] <= 2.0
        more = write_random_games(db, "tictactoe", 10, seed=2)
        _wait_batch(src)  # released as soon as the first new game is in
        deadline = time.monotonic() + 10
        while src.stats()["rows_seen"] < rows + more and time.monotonic() < deadline:
            time.sleep(0.01)
        assert src.stats()["rows_seen"] == rows + more
        while src.next_batch() is not None:
            pass
        assert src.waiting_reason.kind == WaitKind.REUSE_LIMIT
        assert src.state_dict()["samples"] == int(2.0 * (rows + more)) // 16 * 16
    finally:
        src.close()


@pytest.mark.parametrize("trained", [4, 5])  # at the end of a prepared burst, and inside one
def test_resume_gives_the_same_cursor_window_and_batches(tmp_path, trained):
    db = tmp_path / "replay.db"
    write_random_games(db, "connect4", 60, seed=3)
    cfg = _cfg(db, env_id="connect4", batch_size=32, window_min_rows=200, seed=11)
    a = ReplaySource(cfg, prefetch=8, burst=4)
    for _ in range(trained):
        _wait_batch(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # plain types only: loads under weights_only
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    expected = _wait_batch(a)  # what an uninterrupted run trains on next
    a.close()

    b = ReplaySource(cfg, prefetch=8, burst=4)
    b.load_state_dict(state)
    got = _wait_batch(b)
    b.close()
    assert b.state_dict()["cursor"] == state["cursor"] == a.stats()["replay_cursor"]
    assert b.stats()["rows_seen"] == a.stats()["rows_seen"]
    assert b.state_dict()["samples"] == state["samples"] + 32
    w = a.stats()["window_size"]
    assert w < a.stats()["rows_seen"]  # the window really is a suffix
    for x, y in zip(a.window.newest(w), b.window.newest(w)):
        np.testing.assert_array_equal(x, y)
    for name in ("obs", "legal_mask", "policy", "value"):
        assert torch.equal(getattr(expected, name), getattr(got, name)), name


def test_rows_seen_keeps_counting_across_restarts(tmp_path):
    db = tmp_path / "replay.db"
    first = write_random_games(db, "tictactoe", 10, seed=1)
    a = ReplaySource(_cfg(db))
    _wait_batch(a)
    state = a.state_dict()
    a.close()
    second = write_random_games(db, "tictactoe", 10, seed=2)
    b = ReplaySource(_cfg(db))
    b.load_state_dict(state)
    _wait_batch(b)
    deadline = time.monotonic() + 5
    while b.stats()["rows_seen"] < first + second and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b.stats()["rows_seen"] == b.stats()["replay_buffer_size"] == first + second
    b.close()


def test_schema_error_is_raised_from_next_batch(tmp_path):
    db = tmp_path / "replay.db"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE transitions (id TEXT, env_id TEXT, observation BLOB, policy_probs BLOB, "
        "mcts_value REAL, game_outcome REAL, timestamp INTEGER)"
    )
    conn.commit()
    conn.close()
    src = ReplaySource(_cfg(db))
    try:
        for _ in range(2):  # and again: the error does not go away
            with pytest.raises(SchemaError, match="'action'") as exc:
                src.next_batch()
            assert str(db) in str(exc.value)
    finally:
        src.close()


def test_error_in_the_worker_mid_run_surfaces(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 10, seed=1)
    src = ReplaySource(_cfg(db))
    try:
        _wait_batch(src)
        conn = sqlite3.connect(db)
        conn.execute("DROP TABLE transitions")
        conn.commit()
        conn.close()
        with pytest.raises(SchemaError, match="transitions"):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                src.next_batch()
                time.sleep(0.01)
    finally:
        src.close()


def test_corrupt_rows_counted_in_stats(tmp_path):
    db = tmp_path / "replay.db"
    rows = write_random_games(db, "tictactoe", 10, seed=1)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE transitions SET observation = x'0000' WHERE step_number = 0")
    conn.commit()
    conn.close()
    src = ReplaySource(_cfg(db))
    try:
        _wait_batch(src)
        stats = src.stats()
        assert stats["bad_rows"] == stats["bad_rows_obs_length"] == 10
        assert stats["rows_seen"] == rows - 10 and stats["replay_buffer_size"] == rows
    finally:
        src.close()


def test_close_is_prompt(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 5, seed=1)
    src = ReplaySource(_cfg(db, poll_interval=30.0))
    _wait_batch(src)
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0


def test_skipped_nonfinite_steps_do_not_spend_the_reuse_budget(tmp_path):
    from trainer.games import get_game
    from trainer.model.networks import build_network
    from trainer.objectives.policy_value import PolicyValueObjective
    from trainer.training.loop import TrainLoop, WaitPolicy
    from trainer.training.lr_schedule import LRSchedule
    from trainer.training.state import TrainState

    class EveryOtherBatchPoisoned(PolicyValueObjective):
        calls = 0

        def train_step(self, batch, lr):
            self.calls += 1
            if self.calls % 2:
                batch.obs[0, 0] = float("nan")  # refused by the objective's own StepGuard
            return super().train_step(batch, lr)

    class StopAtTheReuseLimit(Hook):
        """Stops once the reuse limit has held for a while: a batch given back frees its
        samples a moment before the worker prepares them again."""

        name = "stop_at_reuse_limit"
        since = 0.0

        def after_step(self, loop, metrics) -> None:
            self.since = 0.0

        def on_wait(self, loop) -> None:
            if loop.wait_kind != WaitKind.REUSE_LIMIT:
                return
            self.since = self.since or time.monotonic()
            if time.monotonic() - self.since > 0.5:
                loop.request_stop("reuse limit")

    db = tmp_path / "replay.db"
    rows = write_random_games(db, "tictactoe", 10, seed=1)
    spec = get_game("tictactoe").spec
    src = ReplaySource(_cfg(db, max_reuse=2.0, min_rows=20))
    objective = EveryOtherBatchPoisoned(build_network(spec, "mlp", 8, 1), lr=1e-3)
    state = TrainState(mode="daemon", env_id=spec.env_id, spec={}, network={})
    wait = WaitPolicy(first=0.001, cap=0.01, brief_cap=0.01)
    loop = TrainLoop(objective, src, state, LRSchedule(peak=1e-3), 0, [StopAtTheReuseLimit()], wait)
    try:
        loop.run()
    finally:
        src.close()
    assert loop.stop_reason == "reuse limit" and state.nonfinite_steps == state.step
    # Every sample the budget allows was learned from; the refused batches came on top.
    assert state.step == int(2.0 * rows) // 16 and state.samples_trained == state.step * 16
    assert src.state_dict()["samples"] == state.samples_trained
    assert src.stats()["reuse_ratio"] == state.samples_trained / rows
