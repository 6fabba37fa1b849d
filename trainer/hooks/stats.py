"""stats.json for the dashboard (contract section 4), rewritten atomically.

Contract integer fields are cast with int() at the last moment: a float such as 100.0
makes the existing Rust reader show zeros. History is bounded by thinning (every other
old entry dropped when full), so the chart always spans the whole run. History and
eval_history survive restarts by being read back from the previous stats.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer import __version__
from trainer.atomic_files import atomic_write_json, finite_or_none
from trainer.hooks.base import Hook

log = logging.getLogger(__name__)

HISTORY_KEYS = ("total_loss", "policy_loss", "value_loss", "learning_rate")


def thin_history(history: list[dict], limit: int) -> list[dict]:
    """When over `limit`, keep ~limit/2 entries spread evenly over the whole step span.

    Evenly in steps, not in count: halving by count again and again would leave the
    start of a long run with almost nothing. First and newest entries always stay.
    """
    if len(history) <= limit:
        return history
    steps = np.array([h["step"] for h in history], dtype=np.float64)
    grid = np.linspace(steps[0], steps[-1], max(2, limit // 2))
    right = np.clip(np.searchsorted(steps, grid), 1, len(steps) - 1)
    nearest = np.where(grid - steps[right - 1] <= steps[right] - grid, right - 1, right)
    keep = sorted(set(nearest.tolist()) | {0, len(history) - 1})
    return [history[i] for i in keep]


def resident_memory_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StatsHook(Hook):
    name = "stats"

    # The dashboard polls every few seconds; rewriting the file more often than this only
    # costs the training thread time, noticeably so for a tiny MLP's fast steps.
    MIN_WRITE_SECONDS = 0.5

    def __init__(self, path: Path, every: int, env_id: str, mode: str, total_steps: int, history_size: int = 400):
        self.path, self.every = Path(path), every
        self.env_id, self.mode, self.total_steps = env_id, mode, total_steps
        self.history_size = history_size
        self.history: list[dict] = []
        self._last_write = 0.0
        self._written_kind = None
        self.previous_eval: list[dict] = []

    # --- lifecycle ------------------------------------------------------------------------
    def on_start(self, loop) -> None:
        self._load_previous(loop.state.step)
        self.write(loop)

    def run(self, loop, metrics) -> None:
        m = loop.last_metrics
        self.history.append({
            "step": int(loop.state.step),
            "total_loss": float(m.get("total_loss", 0.0)),
            "policy_loss": float(m.get("policy_loss", 0.0)),
            "value_loss": float(m.get("value_loss", 0.0)),
            "learning_rate": float(loop.last_lr),
        })
        self.history = thin_history(self.history, self.history_size)
        if time.monotonic() - self._last_write >= self.MIN_WRITE_SECONDS:
            self.write(loop)

    def on_phase(self, loop) -> None:
        # A change of state is news for the dashboard: write it at once, throttle or not.
        # The loop's last phase change is to `stopped`, after every hook's on_stop, so this
        # also writes the final file.
        self.write(loop)

    def on_wait(self, loop) -> None:
        # A new reason (e.g. "reuse limit" after "loading") is news; the same one only needs
        # a refresh of the live counts it carries.
        if loop.wait_kind != self._written_kind or time.monotonic() - self._last_write >= 2.0:
            self.write(loop)

    def _load_previous(self, resumed_step: int) -> None:
        """Keep the chart across restarts: entries up to the step we resumed from."""
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(old, dict) or old.get("env_id") != self.env_id or old.get("mode", "daemon") != self.mode:
            return
        hist = old.get("history")
        if isinstance(hist, list):
            self.history = [h for h in hist if isinstance(h, dict) and isinstance(h.get("step"), int) and h["step"] <= resumed_step]
        self.previous_eval = [
            e for e in old.get("eval_history") or [] if isinstance(e, dict) and isinstance(e.get("step"), int) and e["step"] <= resumed_step
        ]

    # --- the file -------------------------------------------------------------------------
    def build(self, loop) -> dict[str, Any]:
        m = loop.last_metrics
        source = loop.source.stats()
        stats: dict[str, Any] = {
            # contract keys
            "step": int(loop.state.step),
            "total_steps": int(self.total_steps),
            "total_loss": float(m.get("total_loss", 0.0)),
            "policy_loss": float(m.get("policy_loss", 0.0)),
            "value_loss": float(m.get("value_loss", 0.0)),
            "learning_rate": float(loop.last_lr),
            "samples_seen": int(loop.state.samples_trained),
            "replay_buffer_size": int(source.get("replay_buffer_size", 0) or 0),
            "last_checkpoint": "",
            "timestamp": time.time(),
            "env_id": self.env_id,
            "history": self.history,
            "last_eval": None,
            "eval_history": [],
            # additions
            "state": loop.phase,
            "state_reason": loop.phase_reason,
            "mode": self.mode,
            **loop.throughput.rates(),
            "policy_entropy": float(m.get("policy_entropy", 0.0)),
            "grad_norm": float(m.get("grad_norm", 0.0)),
            "nonfinite_steps": int(loop.state.nonfinite_steps),
            "rss_mb": round(resident_memory_mb(), 1),
            "trainer_version": __version__,
            "metrics": {k: float(v) for k, v in m.items()},
        }
        for k, v in source.items():
            stats.setdefault(k, v)
        for hook in loop.hooks:
            if hook is not self:
                stats.update(hook.stats())
        if not stats["eval_history"] and self.previous_eval:
            stats["eval_history"] = self.previous_eval
        for key in ("window_size", "rows_seen", "bad_rows", "publish_failures"):
            if isinstance(stats.get(key), float):
                stats[key] = int(stats[key])
        return finite_or_none(stats)

    def write(self, loop) -> None:
        self._last_write, self._written_kind = time.monotonic(), loop.wait_kind
        try:
            atomic_write_json(self.path, self.build(loop), durable=False)
        except OSError as exc:  # a full disk must not kill training; say so and go on
            log.warning("could not write %s: %s", self.path, exc)
