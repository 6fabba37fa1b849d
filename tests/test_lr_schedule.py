"""The LR is a pure function of the global step; restarts must not change it."""

import math

import pytest
from replay_data import write_random_games

from trainer.commands.train import build_daemon
from trainer.config import DaemonConfig
from trainer.hooks.base import Hook
from trainer.training.lr_schedule import LRSchedule
from trainer.training.run import run_to_end


def make(**kw):
    return LRSchedule(peak=1e-3, warmup_steps=100, decay_steps=1000, min_ratio=0.1, **kw)


def test_warmup_is_linear_and_reaches_peak():
    s = make()
    assert s(0) == pytest.approx(1e-5)
    assert s(49) == pytest.approx(5e-4)
    assert s(99) == pytest.approx(1e-3)


def test_cosine_decays_to_floor_and_stays():
    s = make()
    assert s(100) == pytest.approx(1e-3)
    mid = 100 + 450
    assert s(mid) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(1000) == pytest.approx(1e-4)
    assert s(50_000) == pytest.approx(1e-4)
    lrs = [s(i) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


class _LRRecorder(Hook):
    """Records the LR the loop applied at each step; can stop the run at a given step."""

    name = "lr_recorder"

    def __init__(self, stop_at: int = 0):
        self.applied: dict[int, float] = {}
        self.stop_at = stop_at

    def after_step(self, loop, metrics):
        self.applied[loop.step] = loop.last_lr
        if loop.step == self.stop_at:
            loop.request_stop("test")


def _run(folder, recorder, fresh):
    cfg = DaemonConfig(
        db=folder.parent / "replay.db",
        model_dir=folder / "models",
        stats=folder / "stats.json",
        steps=400,
        lr_warmup_steps=100,
        lr_min_ratio=0.1,
        checkpoint_interval=1000,
        min_rows=50,
        max_reuse=0,
        eval_interval=0,
        fresh=fresh,
        hidden=16,
        layers=1,
        batch_size=16,
    )
    loop = build_daemon(cfg)
    loop.hooks.append(recorder)
    run_to_end(loop)


def test_a_resumed_daemon_applies_the_lr_of_an_uninterrupted_run(tmp_path):
    """Regression for the field's two restart bugs, through the daemon's real resume path: warmup
    firing again after a restart (a schedule counted from process start) and the cosine frozen
    or stretched after one (a schedule sized from the steps remaining)."""
    write_random_games(tmp_path / "replay.db", "tictactoe", 20, seed=0)
    straight = _LRRecorder()
    _run(tmp_path / "straight", straight, fresh=True)
    first, resumed = _LRRecorder(stop_at=150), _LRRecorder()
    _run(tmp_path / "restarted", first, fresh=True)
    _run(tmp_path / "restarted", resumed, fresh=False)  # same command again: resumes at 150
    assert max(first.applied) == 150 and min(resumed.applied) == 151 and max(resumed.applied) == 400
    applied = {**first.applied, **resumed.applied}
    assert applied == pytest.approx(straight.applied, rel=1e-12)
    schedule = LRSchedule(peak=DaemonConfig().lr, warmup_steps=100, decay_steps=400, min_ratio=0.1)
    assert resumed.applied[151] == pytest.approx(schedule(150))  # the LR for the update 150 -> 151
    assert resumed.applied[151] > schedule(99) * 0.8  # past warmup: not back at its start
    assert resumed.applied[400] == pytest.approx(schedule(399)) and schedule(399) > schedule(
        400
    )  # cosine reaches its end


def test_disabled_schedule_is_constant():
    s = make(enabled=False)
    assert {s(0), s(100), s(5000)} == {1e-3}


def test_no_decay_length_means_constant_after_warmup():
    s = LRSchedule(peak=2e-3, warmup_steps=10, decay_steps=0)
    assert s(5) == pytest.approx(1.2e-3)
    assert s(10) == s(10_000) == 2e-3
