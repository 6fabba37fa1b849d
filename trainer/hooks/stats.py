"""stats.json for the dashboard (contract section 4), rewritten atomically.

The contract's keys are declared with their types in one place (`_contract`). History is
bounded by thinning, so the chart always spans the whole run, and survives restarts by
being read back from the previous stats.json; eval_history is the evaluation hook's, kept
in the checkpoint like any hook's bookkeeping.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer import __version__
from trainer.atomic_files import atomic_write_json, finite_or_none
from trainer.hooks.base import Hook, LoopView
from trainer.hooks.publish import LAST_PUBLISHED_MODEL
from trainer.runtime import resident_memory_mb

log = logging.getLogger(__name__)


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


class StatsHook(Hook):
    name = "stats"

    # The dashboard polls every few seconds; rewriting the file more often than this only
    # costs the training thread time, noticeably so for a tiny MLP's fast steps.
    MIN_WRITE_SECONDS = 0.5

    def __init__(
        self,
        path: Path,
        every: int,
        env_id: str,
        mode: str,
        total_steps: int,
        history_size: int = 400,
        listeners: Sequence[Callable[[dict[str, Any]], None]] = (),
    ):
        """`listeners` (the Prometheus and TensorBoard exporters) get each dict written."""
        self.path, self.every = Path(path), every
        self.listeners = list(listeners)
        self.env_id, self.mode, self.total_steps = env_id, mode, total_steps
        self.history_size = history_size
        self.history: list[dict] = []
        self._last_write = 0.0
        self._written_kind = None

    # --- lifecycle ------------------------------------------------------------------------
    def on_start(self, loop) -> None:
        self._load_previous(loop.step)
        self.write(loop)

    def run(self, loop, metrics) -> None:
        m = loop.last_metrics
        self.history.append(
            {
                "step": int(loop.step),
                "total_loss": float(m.get("total_loss", 0.0)),
                "policy_loss": float(m.get("policy_loss", 0.0)),
                "value_loss": float(m.get("value_loss", 0.0)),
                "learning_rate": float(loop.last_lr),
            }
        )
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
        if (
            not isinstance(old, dict)
            or old.get("env_id") != self.env_id
            or old.get("mode", "daemon") != self.mode
        ):
            return
        hist = old.get("history")
        if isinstance(hist, list):
            self.history = [
                h
                for h in hist
                if isinstance(h, dict) and isinstance(h.get("step"), int) and h["step"] <= resumed_step
            ]

    # --- the file -------------------------------------------------------------------------
    def build(self, loop: LoopView) -> dict[str, Any]:
        """The file's three parts, each declared in one place: the figures the source and the
        other hooks report, this hook's extras, and the contract's keys with the contract's
        types. The contract's keys come last, so no figure can shadow one."""
        source, hooks = loop.source_stats(), loop.hook_stats()
        return finite_or_none(
            {**source, **hooks, **self._extras(loop), **self._contract(loop, source, hooks)}
        )

    def _contract(self, loop: LoopView, source: dict[str, Any], hooks: dict[str, Any]) -> dict[str, Any]:
        """Contract section 4. Integers are Python ints: a float such as 100.0 makes the
        existing Rust reader show zeros."""
        m = loop.last_metrics
        evals = hooks.get("eval_history") or []
        return {
            "step": int(loop.step),
            "total_steps": int(self.total_steps),
            "total_loss": float(m.get("total_loss", 0.0)),
            "policy_loss": float(m.get("policy_loss", 0.0)),
            "value_loss": float(m.get("value_loss", 0.0)),
            "learning_rate": float(loop.last_lr),
            "samples_seen": int(loop.samples_trained),
            "replay_buffer_size": int(source.get("replay_buffer_size", 0) or 0),
            # The contract's name for the newest published model (not a training checkpoint).
            "last_checkpoint": str(hooks.get(LAST_PUBLISHED_MODEL, "")),
            "timestamp": time.time(),
            "env_id": self.env_id,
            "history": self.history,
            "last_eval": evals[-1] if evals else None,
            "eval_history": evals,
        }

    def _extras(self, loop: LoopView) -> dict[str, Any]:
        m = loop.last_metrics
        return {
            "state": loop.phase,
            "state_reason": loop.phase_reason,
            "mode": self.mode,
            **loop.rates(),
            "policy_entropy": float(m.get("policy_entropy", 0.0)),
            "grad_norm": float(m.get("grad_norm", 0.0)),
            "nonfinite_steps": int(loop.nonfinite_steps),
            "rss_mb": round(resident_memory_mb(), 1),
            "trainer_version": __version__,
            "metrics": {k: float(v) for k, v in m.items()},
        }

    def write(self, loop: LoopView) -> None:
        self._last_write, self._written_kind = time.monotonic(), loop.wait_kind
        stats = self.build(loop)
        try:
            atomic_write_json(self.path, stats, durable=False)
        except OSError as exc:  # a full disk must not kill training; say so and go on
            log.warning("could not write %s: %s", self.path, exc)
        for listener in self.listeners:
            listener(stats)
