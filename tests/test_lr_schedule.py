"""The LR is a pure function of the global step; restarts must not change it."""

import math

import pytest

from trainer.training.lr_schedule import LRSchedule


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


def test_resumed_run_uses_the_same_lr_as_an_uninterrupted_one():
    # Regression: schedules counted from process start re-run warmup after a restart,
    # and schedules sized from "remaining steps" freeze the cosine. Here a restart is a
    # brand-new schedule object built from the same config.
    uninterrupted = make()
    lrs = [uninterrupted(step) for step in range(1000)]
    for restart_at in (1, 99, 100, 333, 999):
        restarted = make()
        resumed = [restarted(step) for step in range(restart_at, 1000)]
        assert resumed == lrs[restart_at:]
    # After a restart past warmup the LR is not back in warmup.
    assert make()(333) > make()(0) * 10


def test_disabled_schedule_is_constant():
    s = make(enabled=False)
    assert {s(0), s(100), s(5000)} == {1e-3}


def test_no_decay_length_means_constant_after_warmup():
    s = LRSchedule(peak=2e-3, warmup_steps=10, decay_steps=0)
    assert s(5) == pytest.approx(1.2e-3)
    assert s(10) == s(10_000) == 2e-3
