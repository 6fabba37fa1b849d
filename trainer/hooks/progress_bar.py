"""A progress bar for the offline modes, on stderr."""

from __future__ import annotations

import sys
import time

from trainer.hooks.base import Hook


class ProgressBarHook(Hook):
    """`bc [#####-----] 48% 480/1000 52.1 it/s ETA 0:00:10 loss 0.731` on stderr.

    Redrawn in place (at most 5 times a second) on a terminal; one line per 10% otherwise,
    so log files stay readable.
    """

    name = "progress_bar"

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total = label, max(1, total)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = self._last = 0.0
        self._step0 = 0
        self._next_decile = 1

    def on_start(self, loop) -> None:
        self._t0, self._step0 = time.monotonic(), loop.step
        self._next_decile = loop.step * 10 // self.total + 1

    def line(self, step: int, now: float, loss: float) -> str:
        frac = min(1.0, step / self.total)
        done = step - self._step0
        rate = done / max(1e-9, now - self._t0)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "--:--:--"
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        return f"{self.label} [{bar}] {100 * frac:3.0f}% {step}/{self.total} {rate:.1f} it/s ETA {eta_s} loss {loss:.4f}"

    def after_step(self, loop, metrics) -> None:
        now, step = time.monotonic(), loop.step
        loss = float(metrics.get("total_loss", 0.0))
        if self.tty:
            if now - self._last >= 0.2 or step >= self.total:
                self._last = now
                self.stream.write("\r" + self.line(step, now, loss))
                self.stream.flush()
        elif step * 10 // self.total >= self._next_decile:
            self._next_decile = step * 10 // self.total + 1
            self.stream.write(self.line(step, now, loss) + "\n")
            self.stream.flush()

    def on_stop(self, loop) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
