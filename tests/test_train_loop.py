"""The shared loop on its own, in milliseconds: a scripted source beside a real objective.

Every mode runs this loop; the process tests exercise it through the daemon and the offline
commands, these pin its rules down directly: when it waits and for how long, when it gives
up, when it stops and why, what it counts.
"""

from __future__ import annotations

import time

import pytest
import torch

from trainer.games import get_game
from trainer.hooks.base import Hook
from trainer.model.networks import build_network
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.sources.wait_reason import WaitKind, WaitReason
from trainer.training.batch import Batch
from trainer.training.loop import (
    STOPPED,
    TRAINING,
    WAITING,
    DataWaitTimeout,
    TrainLoop,
    WaitPolicy,
)
from trainer.training.lr_schedule import LRSchedule
from trainer.training.state import TrainState

SPEC = get_game("tictactoe").spec
BATCH = 8


def batch(n: int = BATCH) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        obs=torch.rand(n, SPEC.obs_size, generator=g),
        legal_mask=torch.ones(n, SPEC.num_actions, dtype=torch.bool),
        policy=torch.full((n, SPEC.num_actions), 1.0 / SPEC.num_actions),
        value=torch.zeros(n),
    )


class ScriptedSource:
    """Hands out the script one entry per call: a Batch, or a WaitReason meaning "none yet".
    After the script: batches forever, or exhausted if `ends`."""

    def __init__(self, script: list[Batch | WaitReason], ends: bool = False, epoch_every: int = 0):
        self.script, self.ends, self.epoch_every = list(script), ends, epoch_every
        self.calls: list[float] = []  # time of each next_batch
        self.given = 0
        self._reason: WaitReason | None = None
        self.closed = False

    def next_batch(self) -> Batch | None:
        self.calls.append(time.monotonic())
        item = self.script.pop(0) if self.script else (None if self.ends else batch())
        self._reason = item if isinstance(item, WaitReason) else None
        if isinstance(item, Batch):
            self.given += 1
            return item
        return None

    @property
    def waiting_reason(self) -> WaitReason | None:
        return self._reason

    @property
    def exhausted(self) -> bool:
        return self.ends and not self.script

    @property
    def epochs_completed(self) -> int:
        return self.given // self.epoch_every if self.epoch_every else 0

    def stats(self) -> dict:
        return {"rows_seen": self.given * BATCH}

    def state_dict(self) -> dict:
        return {"given": self.given}

    def load_state_dict(self, state: dict) -> None:
        self.given = state["given"]

    def close(self) -> None:
        self.closed = True


class Recorder(Hook):
    name = "recorder"

    def __init__(self, stop_at: int = 0):
        self.stop_at = stop_at
        self.phases: list[str] = []
        self.steps: list[int] = []
        self.waits: list[WaitKind] = []
        self.stopped_with = ""

    def on_phase(self, loop) -> None:
        self.phases.append(loop.phase)

    def on_wait(self, loop) -> None:
        self.waits.append(loop.wait_kind)

    def after_step(self, loop, metrics) -> None:
        self.steps.append(loop.step)
        if loop.step == self.stop_at:
            loop.request_stop("asked")

    def on_stop(self, loop) -> None:
        self.stopped_with = loop.stop_reason


def make_loop(
    source: ScriptedSource,
    total_steps: int = 0,
    wait: WaitPolicy | None = None,
    hooks: list[Hook] | None = None,
) -> TrainLoop:
    torch.manual_seed(0)
    objective = PolicyValueObjective(build_network(SPEC, "mlp", 8, 1), lr=1e-3)
    state = TrainState(mode="daemon", env_id=SPEC.env_id, spec={}, network={})
    return TrainLoop(
        objective,
        source,
        state,
        LRSchedule(peak=1e-3),
        total_steps,
        hooks or [],
        wait or WaitPolicy(first=0.001, cap=0.004, brief_cap=0.002),
    )


NO_DB = WaitReason(WaitKind.NO_DB, "no replay DB")
LOADING = WaitReason(WaitKind.LOADING, "loading")


def test_backoff_doubles_to_its_cap_and_brief_waits_poll_at_the_brief_cap():
    policy = WaitPolicy(first=1.0, cap=30.0, brief_cap=0.5)
    assert [policy.delay(i, brief=False, waited=0) for i in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert {policy.delay(i, brief=True, waited=0) for i in range(7)} == {0.5}
    # Never sleeps past --max-wait; brief waits do not count against it.
    limited = WaitPolicy(first=1.0, cap=30.0, max_wait=10.0)
    assert limited.delay(5, brief=False, waited=7.5) == 2.5
    assert limited.delay(5, brief=False, waited=10.0) == 0.01
    assert limited.delay(5, brief=True, waited=100.0) == 0.5


def test_trains_through_waits_and_stops_at_the_step_limit():
    source = ScriptedSource([NO_DB, NO_DB, LOADING, batch(), NO_DB, batch()])
    rec = Recorder()
    loop = make_loop(source, total_steps=5, hooks=[rec])
    loop.run()
    assert loop.state.step == 5 and loop.state.samples_trained == 5 * BATCH
    assert rec.steps == [1, 2, 3, 4, 5]
    assert rec.waits == [WaitKind.NO_DB, WaitKind.NO_DB, WaitKind.LOADING, WaitKind.NO_DB]
    assert rec.phases == [WAITING, TRAINING, WAITING, TRAINING, STOPPED]
    assert loop.stop_reason == rec.stopped_with == "reached --steps 5"
    assert loop.wait_kind is None and loop.last_metrics["total_loss"] > 0


def test_max_wait_gives_up_on_missing_data_but_not_on_brief_waits():
    # Brief waits alone never time out, however long they last in total.
    source = ScriptedSource([LOADING] * 30 + [batch()])
    loop = make_loop(
        source, total_steps=1, wait=WaitPolicy(first=0.001, cap=0.004, brief_cap=0.002, max_wait=0.02)
    )
    loop.run()
    assert loop.state.step == 1

    source = ScriptedSource([NO_DB] * 1000)
    rec = Recorder()
    loop = make_loop(source, wait=WaitPolicy(first=0.001, cap=0.004, max_wait=0.05), hooks=[rec])
    t0 = time.monotonic()
    with pytest.raises(DataWaitTimeout):
        loop.run()
    assert 0.05 <= time.monotonic() - t0 < 5
    assert (
        loop.stop_reason.startswith("no usable data after waiting") and rec.stopped_with == loop.stop_reason
    )
    assert rec.phases[-1] == STOPPED and loop.state.step == 0


def test_a_batch_ends_the_wait_and_restarts_the_backoff():
    source = ScriptedSource([NO_DB] * 4 + [batch()] + [NO_DB] * 2 + [batch()])
    loop = make_loop(source, total_steps=2, wait=WaitPolicy(first=0.01, cap=1.0))
    loop.run()
    gaps = [b - a for a, b in zip(source.calls, source.calls[1:])]
    # 0.01, 0.02, 0.04, 0.08 before the first batch; after it, 0.01 and 0.02 again.
    assert gaps[3] >= 0.08 and gaps[6] < 0.08 and gaps[5] >= 0.01


def test_stop_reasons_request_and_exhaustion():
    rec = Recorder(stop_at=3)
    loop = make_loop(ScriptedSource([]), hooks=[rec])
    loop.run()
    assert loop.state.step == 3 and loop.stop_reason == "asked"

    loop = make_loop(ScriptedSource([batch(), NO_DB, batch()], ends=True))
    loop.run()
    assert loop.state.step == 2 and loop.stop_reason == "data source exhausted"


def test_throughput_counts_samples_steps_and_waiting():
    source = ScriptedSource([batch(), *([NO_DB] * 5), *[batch() for _ in range(20)]])
    loop = make_loop(source, total_steps=21, wait=WaitPolicy(first=0.01, cap=0.01))
    t0 = time.monotonic()
    loop.run()
    span = time.monotonic() - t0
    rates = loop.view.rates()
    assert rates["samples_per_sec"] == pytest.approx(rates["steps_per_sec"] * BATCH)
    assert rates["steps_per_sec"] >= 20 / span
    assert 0.05 / span * 0.5 < rates["wait_fraction"] <= 1


def test_hooks_see_the_view_only_and_a_failing_hook_does_not_stop_the_save():
    class Broken(Hook):
        name = "broken"

        def on_stop(self, loop):
            raise OSError("disk gone")

    class Saver(Hook):
        name = "saver"

        def __init__(self):
            self.saved_step = -1
            self.epochs: list[int] = []

        def after_step(self, loop, metrics):
            self.epochs.append(loop.epochs_completed)
            assert not hasattr(loop, "source") and not hasattr(loop, "hooks") and not hasattr(loop, "state")

        def on_stop(self, loop):
            self.saved_step = loop.snapshot().step

    saver = Saver()
    loop = make_loop(ScriptedSource([], epoch_every=2), total_steps=4, hooks=[Broken(), saver])
    loop.run()
    assert saver.saved_step == 4 and loop.state.source == {"given": 4}
    assert saver.epochs == [0, 1, 1, 2]
    assert loop.view.source_stats() == {"rows_seen": 4 * BATCH}
