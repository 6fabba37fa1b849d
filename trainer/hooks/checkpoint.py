"""Save the whole TrainState every N steps and when stopping.

A save that fails (disk full, quota, a read-only remount) or is refused (weights gone
NaN) is logged with the reason and counted; training goes on with the previous checkpoint
intact, and the next interval tries again. Losing a few minutes of progress beats losing
the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from trainer.hooks.base import Hook
from trainer.training.state import NonFiniteState, save_checkpoint

log = logging.getLogger(__name__)


class CheckpointWrites:
    """Every checkpoint file a run writes (step files, latest.pt, best.pt) goes through one of
    these, so stats.json's `checkpoint_failures` counts them all; the writers share one."""

    def __init__(self) -> None:
        self.failures = 0

    def write(self, save: Callable[[], Path], what: str, folder: Path) -> Path | None:
        """`save()`'s path, or None when it failed: logged with the reason and counted."""
        try:
            return save()
        except (OSError, NonFiniteState) as exc:
            self.failures += 1
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.error("%s NOT saved in %s: %s (the previous one is kept)", what, folder, reason)
            return None


class CheckpointHook(Hook):
    name = "checkpoint"

    def __init__(self, folder: Path, every: int, keep: int, writes: CheckpointWrites | None = None):
        self.folder, self.every, self.keep = Path(folder), every, keep
        self.writes = writes or CheckpointWrites()
        self.last_saved_step = -1
        self.last_path: Path | None = None

    def run(self, loop, metrics) -> None:
        self.save(loop)

    def save(self, loop) -> None:
        step = loop.step
        if step == self.last_saved_step:
            return
        path = self.writes.write(
            lambda: save_checkpoint(loop.snapshot(), self.folder, self.keep),
            f"checkpoint for step {step}",
            self.folder,
        )
        if path is None:
            return
        self.last_path, self.last_saved_step = path, step
        log.debug("checkpoint saved: %s", self.last_path)

    def on_start(self, loop) -> None:
        self.last_saved_step = loop.step  # what we resumed from is already on disk

    def on_stop(self, loop) -> None:
        self.save(loop)

    def stats(self) -> dict:
        return {
            "last_training_checkpoint": str(self.last_path) if self.last_path else "",
            "checkpoint_failures": self.writes.failures,
        }
