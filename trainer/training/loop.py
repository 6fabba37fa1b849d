"""The one training loop every mode runs: pull a batch, step the objective, call hooks.

    while not done:                          # decided by every rank together (agreement)
        batch = source.next_batch()          # None -> wait (with a reason) and retry
        lr = schedule(state.step)            # pure function of the global step
        metrics = objective.train_step(batch, lr)
        state.step += 1
        hooks.after_step(...)                # checkpoint, publish, stats, log, eval

Everything periodic lives in hooks, which see the loop through `HookView`;
everything a resume needs lives in `state`. Setting a run up and tearing it down (folder
lock, resume, signals, exit codes) is `training/run.py`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from trainer.distributed.agreement import Agreement, StepFlags
from trainer.distributed.process_group import DistContext
from trainer.hooks.base import Hook
from trainer.objectives.base import NonFiniteStep, Objective
from trainer.runtime import StopFlag
from trainer.sources import BatchSource
from trainer.sources.wait_reason import NO_BATCH, WaitKind, WaitReason
from trainer.training.batch import Batch
from trainer.training.lr_schedule import LRSchedule
from trainer.training.state import TrainState

log = logging.getLogger(__name__)

# Phases shown in stats.json `state`.
STARTING, WAITING, TRAINING, PUBLISHING, STOPPED = (
    "starting",
    "waiting_for_data",
    "training",
    "publishing",
    "stopped",
)


# What a rank that has its batch shows while another rank waits for data: a brief wait.
PEER_WAITING = WaitReason(WaitKind.PREPARING, "another rank is waiting for data")


class DataWaitTimeout(RuntimeError):
    """No data within --max-wait; the command exits with code 2."""


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the command exits with code 2."""


@dataclass
class WaitPolicy:
    first: float = 1.0  # seconds
    cap: float = 30.0
    max_wait: float = 0.0  # 0 = forever
    # Brief waits (reuse budget, loading a backlog) end as soon as actors write a few rows
    # or the load finishes: poll often for those instead of backing off.
    brief_cap: float = 0.5

    def delay(self, attempt: int, brief: bool, waited: float) -> float:
        """Seconds to sleep before asking the source again, on the `attempt`th try of a wait
        that has lasted `waited` seconds: doubling up to the cap, and never past --max-wait."""
        cap = self.brief_cap if brief else self.cap
        delay = min(cap, self.first * 2**attempt)
        if self.max_wait and not brief:
            delay = min(delay, max(0.01, self.max_wait - waited))
        return delay


class Throughput:
    """Rates over a sliding time window, for logs and stats (running sums: O(1) per step)."""

    def __init__(self, horizon: float = 30.0):
        self.horizon = horizon
        self.events: deque = deque()  # (time, samples, waited_seconds)
        self.samples = 0
        self.waited = 0.0

    def add(self, t: float, samples: int, waited: float) -> None:
        self.events.append((t, samples, waited))
        self.samples += samples
        self.waited += waited
        while len(self.events) > 2 and t - self.events[0][0] > self.horizon:
            _, s, w = self.events.popleft()
            self.samples -= s
            self.waited -= w

    def rates(self) -> dict[str, float]:
        if len(self.events) < 2:
            return {"samples_per_sec": 0.0, "steps_per_sec": 0.0, "wait_fraction": 0.0}
        first_t, first_samples, first_waited = self.events[0]
        span = max(1e-9, self.events[-1][0] - first_t)
        return {
            "samples_per_sec": (self.samples - first_samples) / span,
            "steps_per_sec": (len(self.events) - 1) / span,
            "wait_fraction": min(1.0, max(0.0, self.waited - first_waited) / span),
        }


_STOP = object()  # `_agreed_batch`: every rank stops


class HookView:
    """The loop as its hooks see it (`hooks.base.LoopView`): counters, figures, the phase, and
    the few actions a hook may take. Not the source, the schedule or the other hooks."""

    def __init__(self, loop: TrainLoop):
        self._loop = loop

    @property
    def step(self) -> int:
        return self._loop.state.step

    @property
    def samples_trained(self) -> int:
        return self._loop.state.samples_trained

    @property
    def epochs_completed(self) -> int:
        return self._loop.source.epochs_completed

    @property
    def nonfinite_steps(self) -> int:
        return self._loop.state.nonfinite_steps

    @property
    def phase(self) -> str:
        return self._loop.phase

    @property
    def phase_reason(self) -> str:
        return self._loop.phase_reason

    @property
    def wait_kind(self) -> WaitKind | None:
        return self._loop.wait_kind

    @property
    def stop_reason(self) -> str:
        return self._loop.stop_reason

    @property
    def last_lr(self) -> float:
        return self._loop.last_lr

    @property
    def last_metrics(self) -> dict[str, float]:
        return self._loop.last_metrics

    @property
    def stopping(self) -> bool:
        return self._loop.stop_event.is_set()

    @property
    def objective(self) -> Objective:
        return self._loop.objective

    def source_stats(self) -> dict[str, Any]:
        return self._loop.source.stats()

    def rates(self) -> dict[str, float]:
        return self._loop.throughput.rates()

    def hook_stats(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for hook in self._loop.hooks:
            merged.update(hook.stats())
        return merged

    def request_stop(self, reason: str) -> None:
        self._loop.request_stop(reason)

    def snapshot(self) -> TrainState:
        return self._loop.snapshot()

    def set_phase(self, phase: str, reason: str = "") -> None:
        self._loop.set_phase(phase, reason)


class TrainLoop:
    # Steps whose loss or gradient is NaN/inf are skipped (the objective applies nothing);
    # this many in a row means the data or the settings are broken, not one unlucky batch.
    max_nonfinite_streak = 20

    def __init__(
        self,
        objective: Objective,
        source: BatchSource,
        state: TrainState,
        schedule: LRSchedule,
        total_steps: int,  # 0 = until stopped or the source is exhausted
        hooks: list[Hook],
        wait: WaitPolicy | None = None,
        agree: Agreement | None = None,  # data-parallel: stop, wait and train together
    ):
        self.objective = objective
        self.source = source
        self.state = state
        self.schedule = schedule
        self.total_steps = total_steps
        self.hooks = hooks
        self.wait = wait or WaitPolicy()
        self.agree = agree or Agreement(DistContext.single())
        # Every rank trains a batch of this size per step: counters and rates are global.
        self.world_size = self.agree.ctx.world_size
        # A batch this rank drew in a round where another rank had none: trained next round.
        self._held: Batch | None = None
        self._wait_expired = ""  # why this rank's wait ran past --max-wait; "" while it has not
        self.stop_event = StopFlag()  # set from a signal handler: no lock
        self.stop_reason = ""
        self.phase = STARTING
        self.phase_reason = "loading"
        self.wait_kind: WaitKind | None = None  # kind of the current wait, None while training
        self.last_metrics: dict[str, float] = {}
        self.last_lr = schedule(state.step)
        self.throughput = Throughput()
        self._waited_since_step = 0.0
        # Bookkeeping of the current stretch of waiting (backoff, --max-wait, log throttling).
        self._waiting_started: float | None = None
        self._wait_attempt = 0
        self._last_wait_log = 0.0
        self._last_wait_kind: WaitKind | None = None
        self._nonfinite_streak = 0
        self._last_nonfinite_log = float("-inf")
        self.view = HookView(self)  # what the hooks are handed

    # --- persistence -----------------------------------------------------------------------
    def snapshot(self) -> TrainState:
        """Fill `state` with everything a resume needs, right now (training thread only)."""
        self.state.objective = self.objective.state_dict()
        self.state.source = self.source.state_dict()
        self.state.hooks = {h.name: s for h in self.hooks if (s := h.state_dict()) is not None}
        return self.state

    def restore_hooks(self) -> None:
        for hook in self.hooks:
            if hook.name in self.state.hooks:
                hook.load_state_dict(self.state.hooks[hook.name])

    # --- control -------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Thread- and signal-safe: the loop finishes its current step, then stops."""
        self.stop_reason = self.stop_reason or reason
        self.stop_event.set()

    def set_phase(self, phase: str, reason: str = "") -> None:
        """Training thread only. Hooks hear of a new phase at once (stats.json shows it)."""
        changed = phase != self.phase
        self.phase, self.phase_reason = phase, reason
        if changed:
            for hook in self.hooks:
                hook.on_phase(self.view)

    def done(self) -> bool:
        if self.stop_event.is_set():
            return True
        if self.total_steps and self.state.step >= self.total_steps:
            self.stop_reason = self.stop_reason or f"reached --steps {self.total_steps}"
            return True
        if self.source.exhausted:
            self.stop_reason = self.stop_reason or "data source exhausted"
            return True
        return False

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        for hook in self.hooks:
            hook.on_start(self.view)
        try:
            while (batch := self._agreed_batch()) is not _STOP:
                if batch is None:
                    continue
                self._waiting_started, self.wait_kind, self._wait_expired = None, None, ""
                if self.phase != TRAINING:
                    self.set_phase(TRAINING)
                lr = self.schedule(self.state.step)
                try:
                    metrics = self.agree.collective(self.objective.train_step, batch, lr)
                except NonFiniteStep as skipped:
                    self.source.not_trained(batch)
                    self._skip_nonfinite(skipped)
                    continue
                self._nonfinite_streak = 0
                self.state.step += 1
                self.state.samples_trained += len(batch) * self.world_size
                self.last_lr, self.last_metrics = lr, metrics
                now = time.monotonic()
                self.throughput.add(now, len(batch) * self.world_size, self._waited_since_step)
                self._waited_since_step = 0.0
                for hook in self.hooks:
                    hook.after_step(self.view, metrics)
        except BaseException as exc:
            # The dashboard's last word on a crashed run names the error.
            self.stop_reason = self.stop_reason or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            for hook in self.hooks:
                try:
                    hook.on_stop(self.view)  # save, publish the final model, ...
                except Exception:  # one failing hook must not keep the others from saving
                    log.exception("hook %s failed while stopping", type(hook).__name__)
            # Only now: `stopped` in stats.json promises the checkpoint and model are on disk.
            self.set_phase(STOPPED, self.stop_reason or "stopped")

    def _agreed_batch(self) -> Batch | None | object:
        """This round's batch once every rank agrees to train; None after a wait; `_STOP`.

        Each rank brings its own flags (done, no batch, waited too long) and all act on the
        same merged ones, so every rank stops, waits or steps together. A non-finite step
        needs no agreement: the gradient norm is of the averaged gradients, the same on every
        rank, so all skip it alike.
        """
        local_done = self.done()
        batch: Batch | None = None
        if not local_done:
            batch = self._held if self._held is not None else self.source.next_batch()
            self._held = None
        agreed = self.agree(
            StepFlags(
                stop=local_done,
                no_batch=batch is None,
                wait_expired=bool(self._wait_expired) and batch is None,
            )
        )
        if agreed.stop:
            self.stop_reason = self.stop_reason or "another rank stopped"
            return _STOP
        if agreed.wait_expired:
            self.stop_reason = self._wait_expired or "another rank waited for data past --max-wait"
            raise DataWaitTimeout(self.stop_reason)
        if agreed.no_batch:
            self._held = batch
            if batch is not None:
                self._wait_for_data(PEER_WAITING)
            elif not self.source.exhausted:  # an exhausted source stops at the next round
                self._wait_for_data(self.source.waiting_reason or NO_BATCH)
            return None
        return batch

    def _skip_nonfinite(self, skipped: NonFiniteStep) -> None:
        """Count a refused step; stop once they come `max_nonfinite_streak` in a row.

        The step counter does not move, so the weights a stop checkpoints and publishes are
        those of the last finite step.
        """
        self.state.nonfinite_steps += 1
        self._nonfinite_streak += 1
        now = time.monotonic()
        if self._nonfinite_streak == 1 and now - self._last_nonfinite_log > 30:
            log.warning(
                "skipped a non-finite training step after step %d (%s); %d skipped so far",
                self.state.step,
                skipped,
                self.state.nonfinite_steps,
            )
            self._last_nonfinite_log = now
        if self._nonfinite_streak >= self.max_nonfinite_streak:
            raise TrainingDiverged(
                f"training diverged: {self._nonfinite_streak} steps in a row after step {self.state.step} had a "
                f"non-finite loss or gradient ({skipped}); none was applied, and no NaN weights are saved or "
                "published. Check the data for extreme values, or lower --lr"
            )

    def _wait_for_data(self, reason: WaitReason) -> None:
        now = time.monotonic()
        if self._waiting_started is None:
            self._waiting_started, self._wait_attempt = now, 0
        # Reasons carry live counts; log a change of kind at once, updates at most every 30 s.
        # The kind is compared with the last one logged, not with the phase: a data-bound run
        # (reuse limit) alternates training and waiting every few steps, and logging each new
        # wait flooded the log with two lines a second.
        if reason.kind != self._last_wait_kind or now - self._last_wait_log > 30:
            log.info("waiting for data: %s", reason)
            self._last_wait_log, self._last_wait_kind = now, reason.kind
        self.wait_kind = reason.kind
        self.set_phase(WAITING, str(reason))
        brief = reason.brief
        waited = now - self._waiting_started
        if self.wait.max_wait and not brief and waited >= self.wait.max_wait:
            # Raised by the next round, on every rank at once.
            self._wait_expired = f"no usable data after waiting {waited:.0f}s (--max-wait): {reason}"
            return
        for hook in self.hooks:
            hook.on_wait(self.view)
        delay = self.wait.delay(self._wait_attempt, brief, waited)
        self._wait_attempt += 1
        t0 = time.monotonic()
        self.stop_event.wait(delay)
        self._waited_since_step += time.monotonic() - t0
