"""A progress bar for the offline modes, on stderr."""

from __future__ import annotations

import math
import sys
import time

from trainer.hooks.base import Hook

# Validation figures shown on the bar, by their short name; the validation hook merges them
# into the step metrics (`val_*`) once it has run.
VALIDATION_FIELDS = {"val_loss": "val_total_loss", "val_acc": "val_policy_accuracy"}


class ProgressBarHook(Hook):
    """`bc [#####-----] 48% 480/1000 52.1 it/s ETA 0:00:10 loss 0.7310 val_loss 0.7012 val_acc 0.412`
    on stderr: after the rate, `NAME VALUE` pairs (`fields`), `-` for a validation figure not
    measured yet. With `validation` False (no held-out data) the `val_*` pairs are left out.

    Redrawn in place (at most 5 times a second) on a terminal; one line per 10% otherwise,
    so log files stay readable.
    """

    name = "progress_bar"

    def __init__(self, label: str, total: int, stream=None, validation: bool = False):
        self.label, self.total = label, max(1, total)
        self.stream = stream or sys.stderr
        self.validation = validation
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = self._last = 0.0
        self._step0 = 0
        self._next_decile = 1

    def on_start(self, loop) -> None:
        self._t0, self._step0 = time.monotonic(), loop.step
        self._next_decile = loop.step * 10 // self.total + 1

    def fields(self, step: int, now: float, metrics: dict[str, float]) -> dict[str, str]:
        """The figures after the bar, in order: ETA, training loss, validation figures."""
        rate = (step - self._step0) / max(1e-9, now - self._t0)
        eta = (self.total - step) / rate if rate > 0 else math.inf
        out = {
            "ETA": time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "--:--:--",
            "loss": f"{float(metrics.get('total_loss', 0.0)):.4f}",
        }
        if self.validation:
            for short, key in VALIDATION_FIELDS.items():
                if key in metrics:
                    out[short] = f"{float(metrics[key]):.4f}"
                elif short == "val_loss":  # every mode has a validation loss; accuracy only some
                    out[short] = "-"
        return out

    def line(self, step: int, now: float, metrics: dict[str, float]) -> str:
        frac = min(1.0, step / self.total)
        rate = (step - self._step0) / max(1e-9, now - self._t0)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        pairs = " ".join(f"{k} {v}" for k, v in self.fields(step, now, metrics).items())
        return f"{self.label} [{bar}] {100 * frac:3.0f}% {step}/{self.total} {rate:.1f} it/s {pairs}"

    def after_step(self, loop, metrics) -> None:
        now, step = time.monotonic(), loop.step
        if self.tty:
            if now - self._last >= 0.2 or step >= self.total:
                self._last = now
                self.stream.write("\r" + self.line(step, now, metrics))
                self.stream.flush()
        elif step * 10 // self.total >= self._next_decile:
            self._next_decile = step * 10 // self.total + 1
            self.stream.write(self.line(step, now, metrics) + "\n")
            self.stream.flush()

    def on_stop(self, loop) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
