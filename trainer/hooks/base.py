"""The hook interface: the loop calls these; each hook decides if it is its turn."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.training.loop import TrainLoop


class Hook:
    """Override what you need. `every` = 0 means only on start/stop events.

    A hook with bookkeeping that must survive a restart returns it from `state_dict`
    (plain types); the loop stores it in `TrainState.hooks[hook.name]`. Figures a hook
    wants in stats.json come from `stats`.
    """

    every: int = 0
    name: str = "hook"

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def stats(self) -> dict[str, Any]:
        return {}

    def on_start(self, loop: "TrainLoop") -> None: ...

    def after_step(self, loop: "TrainLoop", metrics: dict[str, float]) -> None:
        if self.every and loop.state.step % self.every == 0:
            self.run(loop, metrics)

    def on_phase(self, loop: "TrainLoop") -> None:
        """Called when the loop's phase (stats.json `state`) changes, on the training thread."""

    def on_wait(self, loop: "TrainLoop") -> None:
        """Called while the loop waits for data (state `waiting_for_data`)."""

    def on_stop(self, loop: "TrainLoop") -> None: ...

    def run(self, loop: "TrainLoop", metrics: dict[str, float]) -> None:
        """The periodic work, when `every` divides the step."""
