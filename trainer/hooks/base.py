"""The hook interface: the loop calls these; each hook decides if it is its turn.

A hook sees the loop through `LoopView`: the step and counters, the latest metrics and LR,
the phase, the source's declared figures, and the few actions a hook may take (ask for a
stop, snapshot the state to save it, announce a phase). It never reaches into the loop's
source, schedule or other hooks directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from trainer.objectives.base import Objective
    from trainer.sources.wait_reason import WaitKind
    from trainer.training.state import TrainState


class LoopView(Protocol):
    """What a hook may read and do (`training.loop.HookView` is the one implementation)."""

    @property
    def phase(self) -> str:
        """stats.json `state`: starting | waiting_for_data | training | publishing | stopped."""

    @property
    def phase_reason(self) -> str: ...

    @property
    def wait_kind(self) -> WaitKind | None:
        """Kind of the current wait; None while training."""

    @property
    def stop_reason(self) -> str: ...

    @property
    def last_lr(self) -> float: ...

    @property
    def last_metrics(self) -> dict[str, float]: ...

    @property
    def step(self) -> int: ...

    @property
    def samples_trained(self) -> int: ...

    @property
    def epochs_completed(self) -> int: ...

    @property
    def nonfinite_steps(self) -> int:
        """Steps skipped so far because their loss or gradient was not finite."""

    @property
    def stopping(self) -> bool:
        """True from the moment a stop is asked for; safe to read from any thread."""

    @property
    def objective(self) -> Objective:
        """For the hooks whose work is the model itself: publishing it, validating it."""

    def source_stats(self) -> dict[str, Any]: ...

    def rates(self) -> dict[str, float]:
        """samples_per_sec, steps_per_sec, wait_fraction over the recent past."""

    def hook_stats(self) -> dict[str, Any]:
        """Every hook's `stats()`, merged."""

    def request_stop(self, reason: str) -> None: ...

    def snapshot(self) -> TrainState:
        """The state filled with everything a resume needs, right now (training thread only)."""

    def set_phase(self, phase: str, reason: str = "") -> None: ...


class Hook:
    """Override what you need.

    `every` is the step period of `run`; 0 means no periodic work, only the start, phase,
    wait and stop events. A hook with bookkeeping that must survive a restart returns it
    from `state_dict` (plain types); the loop stores it in `TrainState.hooks[hook.name]`.
    Figures a hook wants in stats.json come from `stats`.
    """

    every: int = 0
    name: str = "hook"

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def stats(self) -> dict[str, Any]:
        return {}

    def on_start(self, loop: LoopView) -> None: ...

    def after_step(self, loop: LoopView, metrics: dict[str, float]) -> None:
        if self.every and loop.step % self.every == 0:
            self.run(loop, metrics)

    def on_phase(self, loop: LoopView) -> None:
        """Called when the loop's phase (stats.json `state`) changes, on the training thread."""

    def on_wait(self, loop: LoopView) -> None:
        """Called while the loop waits for data (state `waiting_for_data`)."""

    def on_stop(self, loop: LoopView) -> None: ...

    def run(self, loop: LoopView, metrics: dict[str, float]) -> None:
        """The periodic work, when `every` divides the step."""
