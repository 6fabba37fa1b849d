"""A log line every N steps: step, losses, LR, throughput, window, wait fraction."""

from __future__ import annotations

import logging

from trainer.hooks.base import Hook

log = logging.getLogger("trainer")


class ProgressLogHook(Hook):
    name = "progress_log"

    def __init__(self, every: int, total_steps: int):
        self.every, self.total_steps = every, total_steps

    def run(self, loop, metrics) -> None:
        rates = loop.rates()
        src = loop.source_stats()
        total = f"/{self.total_steps}" if self.total_steps else ""
        extra = " ".join(
            f"{k}={metrics[k]:.4g}"
            for k in sorted(metrics)
            if k not in ("total_loss", "policy_loss", "value_loss")
        )
        log.info(
            "step %d%s loss %.4f (policy %.4f value %.4f) lr %.2e | %.0f samples/s %.1f steps/s "
            "wait %.0f%% | window %s rows %s | %s",
            loop.step,
            total,
            metrics.get("total_loss", 0.0),
            metrics.get("policy_loss", 0.0),
            metrics.get("value_loss", 0.0),
            loop.last_lr,
            rates["samples_per_sec"],
            rates["steps_per_sec"],
            100 * rates["wait_fraction"],
            src.get("window_size", "-"),
            src.get("rows_seen", "-"),
            extra,
            extra={
                "fields": {
                    "step": loop.step,
                    "learning_rate": loop.last_lr,
                    **metrics,
                    **rates,
                    "window_size": src.get("window_size"),
                    "rows_seen": src.get("rows_seen"),
                }
            },
        )

    def on_stop(self, loop) -> None:
        log.info("stopped at step %d: %s", loop.step, loop.stop_reason or "stopped")
