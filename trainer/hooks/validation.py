"""Held-out evaluation: per epoch (or every N steps), early stopping, best.pt, LR on plateau.

After each epoch the objective's `evaluate` runs over every validation batch; the averages
are logged and merged into the step metrics as `val_*` (so stats.json `metrics` and the
progress log carry them). A better validation loss (`total_loss`: policy cross-entropy
plus the value MSE where outcomes are known) writes `best.pt`, a full TrainState like
any other checkpoint, so it can be resumed from or passed to `--init-from`. A best.pt that
cannot be written (disk full) is logged and counted like any checkpoint; the next validation
that beats the best.pt on disk writes it then.

The plateau LR is a multiplier on the step schedule, kept in this hook's persisted state:
the LR stays a pure function of (global step, saved state), so a resume cannot drift.

Under torchrun every rank has this hook: rank 0 evaluates and shares the figures, so all
ranks lower the LR and stop early at the same step; only rank 0 has `best_dir`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer.distributed.process_group import DistContext
from trainer.distributed.ranks import share_from_main
from trainer.hooks.base import Hook
from trainer.hooks.checkpoint import CheckpointWrites
from trainer.training.batch import Batch
from trainer.training.lr_schedule import LRSchedule
from trainer.training.state import save_checkpoint_as

log = logging.getLogger("trainer")

BEST_NAME = "best.pt"


class PlateauSchedule:
    """`base(step) * scale`; the validation hook lowers `scale` on a plateau."""

    def __init__(self, base: LRSchedule, factor: float, patience: int, min_scale: float = 1e-3):
        self.base, self.factor, self.patience, self.min_scale = base, factor, patience, min_scale
        self.scale = 1.0

    def __call__(self, step: int) -> float:
        return self.base(step) * self.scale


class ValidationHook(Hook):
    name = "validation"

    def __init__(
        self,
        batches: Iterable[Batch],
        *,
        every: int = 0,  # every N steps (0: no step schedule)
        per_epoch: bool = False,  # after each epoch of the source (the epoch modes)
        patience: int = 0,  # epochs without improvement before stopping (per_epoch only; 0: never)
        best_dir: Path | None = None,
        plateau: PlateauSchedule | None = None,
        writes: CheckpointWrites | None = None,  # shared with the CheckpointHook: one failure count
        ctx: DistContext | None = None,
    ):
        self.ctx = ctx or DistContext.single()
        self.batches, self.every, self.per_epoch, self.patience = batches, every, per_epoch, patience
        self.best_dir, self.plateau = (Path(best_dir) if best_dir else None), plateau
        self.writes = writes or CheckpointWrites()
        self.epochs_validated = 0
        self.best_loss = math.inf
        # The validation loss of the best.pt on disk: above best_loss after a failed write.
        self.saved_best_loss = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.latest: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    # --- the work ------------------------------------------------------------------------
    def evaluate(self, loop) -> dict[str, float]:
        sums: dict[str, float] = {}
        count = 0
        for batch in self.batches:
            n = len(batch)
            for k, v in loop.objective.evaluate(batch).items():
                sums[k] = sums.get(k, 0.0) + v * n
            count += n
        return {f"val_{k}": v / max(1, count) for k, v in sums.items()}

    def after_step(self, loop, metrics) -> None:
        if self.per_epoch:
            done_epochs = loop.epochs_completed
            due, label = done_epochs > self.epochs_validated, f"epoch {done_epochs}"
            self.epochs_validated = max(self.epochs_validated, done_epochs)
        else:
            due, label = bool(self.every) and loop.step % self.every == 0, f"step {loop.step}"
        if due:
            self.validate(loop, label)
        metrics.update(self.latest)

    def validate(self, loop, label: str) -> None:
        self.latest = share_from_main(self.evaluate(loop) if self.ctx.is_main else {}, self.ctx)
        loss = self.latest.get("val_total_loss", math.nan)
        improved = loss < self.best_loss
        if improved:
            self.best_loss, self.best_epoch, self.bad_epochs = loss, self.epochs_validated, 0
        else:
            self.bad_epochs += 1
        if (
            self.plateau is not None
            and not improved
            and self.bad_epochs > 0
            and self.bad_epochs % max(1, self.plateau.patience) == 0
        ):
            old = self.plateau.scale
            self.plateau.scale = max(self.plateau.min_scale, old * self.plateau.factor)
            if self.plateau.scale < old:
                log.info("validation loss plateaued: LR scale %.3g -> %.3g", old, self.plateau.scale)
        self.history.append(
            {"step": int(loop.step), "label": label, **{k: round(v, 6) for k, v in self.latest.items()}}
        )
        self.history = self.history[-200:]
        acc = self.latest.get("val_policy_accuracy", math.nan)
        log.info(
            "%s: val loss %.4f (policy %.4f value %.4f) accuracy %.3f | best %.4f%s",
            label,
            loss,
            self.latest.get("val_policy_loss", math.nan),
            self.latest.get("val_value_loss", math.nan),
            acc,
            self.best_loss,
            " (new best)" if improved else f" ({self.bad_epochs} without improvement)",
        )
        if self.best_dir is not None and loss < self.saved_best_loss:
            self.save_best(loop, loss)
        if self.patience and self.per_epoch and self.bad_epochs >= self.patience:
            loop.request_stop(
                f"early stopping: no better validation loss for {self.bad_epochs} epochs "
                f"(best {self.best_loss:.4f} after epoch {self.best_epoch})"
            )

    def save_best(self, loop, loss: float) -> None:
        assert self.best_dir is not None
        path, on_disk = self.best_dir / BEST_NAME, self.saved_best_loss
        self.saved_best_loss = loss  # before the snapshot, so the file records itself as saved
        saved = self.writes.write(lambda: save_checkpoint_as(loop.snapshot(), path), BEST_NAME, path.parent)
        if saved is None:
            self.saved_best_loss = on_disk

    # --- persistence and stats ----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs_validated": self.epochs_validated,
            "best_loss": self.best_loss,
            "saved_best_loss": self.saved_best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "latest": dict(self.latest),
            "history": list(self.history),
            "lr_scale": self.plateau.scale if self.plateau else 1.0,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_validated = int(state.get("epochs_validated", 0))
        self.best_loss = float(state.get("best_loss", math.inf))
        self.saved_best_loss = float(state.get("saved_best_loss", self.best_loss))
        self.best_epoch = int(state.get("best_epoch", -1))
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.latest = dict(state.get("latest", {}))
        self.history = list(state.get("history", []))
        if self.plateau is not None:
            self.plateau.scale = float(state.get("lr_scale", 1.0))

    def stats(self) -> dict[str, Any]:
        return {
            "validation": dict(self.latest),
            "best_val_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_epoch": int(self.best_epoch),
            "epochs_without_improvement": int(self.bad_epochs),
            "lr_scale": self.plateau.scale if self.plateau else 1.0,
            "validation_history": self.history[-50:],
        }
