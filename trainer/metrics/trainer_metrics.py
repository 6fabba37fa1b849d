"""The daemon's Prometheus metrics, set from the very dict written to stats.json.

Names follow the family's Rust trainer (`trainer_*`); the additions of this daemon (wait
fraction, window, reuse, publish failures, bad rows, state) share the prefix. Counters
mirror stats.json totals: each update adds the growth since the last one, so a counter
equals its stats.json field and never goes down.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Info

# stats.json `state` values (trainer/training/loop.py), the label values of trainer_state.
STATES = ("starting", "waiting_for_data", "training", "publishing", "stopped")


class _Total:
    """A counter that follows a running total read from stats.json."""

    def __init__(self, counter: Counter):
        self.counter, self.seen = counter, 0.0

    def follow(self, total: Any) -> None:
        if isinstance(total, (int, float)) and total > self.seen:
            self.counter.inc(total - self.seen)
            self.seen = float(total)


class TrainerMetrics:
    def __init__(self, env_id: str, device: str, batch_size: int, bad_row_kinds: Iterable[str] = ()):
        self.registry = r = CollectorRegistry(auto_describe=True)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=r)

        # stats.json key -> gauge
        self.gauges: dict[str, Gauge] = {
            "step": gauge("trainer_training_step", "Global training step (stats.json step)."),
            "total_loss": gauge("trainer_loss_total", "Total loss of the last step."),
            "value_loss": gauge("trainer_loss_value", "Value MSE of the last step."),
            "policy_loss": gauge("trainer_loss_policy", "Policy cross-entropy of the last step."),
            "learning_rate": gauge("trainer_learning_rate", "Learning rate of the last step."),
            "samples_per_sec": gauge(
                "trainer_samples_per_second", "Samples trained per second over the last 30 s."
            ),
            "steps_per_sec": gauge(
                "trainer_steps_per_second", "Training steps per second over the last 30 s."
            ),
            "replay_buffer_size": gauge("trainer_replay_buffer_size", "Rows of this game in the replay DB."),
            "last_publish_seconds": gauge(
                "trainer_checkpoint_duration_seconds",
                "Export, check and publish time of the last ONNX model.",
            ),
            "wait_fraction": gauge("trainer_wait_fraction", "Share of the last 30 s spent waiting for data."),
            "window_size": gauge("trainer_window_rows", "Rows in the sampling window."),
            "reuse_ratio": gauge("trainer_reuse_ratio", "Samples trained per row seen."),
        }
        self.step_seconds = gauge(
            "trainer_step_duration_seconds",
            "Mean wall time per training step over the last 30 s (waits included).",
        )
        self.eval_win_rate = gauge("trainer_eval_win_rate", "Win rate of the last evaluation against random.")
        self.eval_draw_rate = gauge(
            "trainer_eval_draw_rate", "Draw rate of the last evaluation against random."
        )
        self.eval_seconds = gauge("trainer_evaluation_duration_seconds", "Wall time of the last evaluation.")
        self.totals: dict[str, _Total] = {
            "samples_seen": _Total(
                Counter("trainer_samples_processed", "Samples trained (stats.json samples_seen).", registry=r)
            ),
            "models_published": _Total(
                Counter("trainer_checkpoints_saved", "ONNX models published by this process.", registry=r)
            ),
            "publish_failures": _Total(
                Counter(
                    "trainer_publish_failures",
                    "Models that failed their check and were not published.",
                    registry=r,
                )
            ),
        }
        bad_rows = Counter(
            "trainer_bad_rows", "Malformed replay rows skipped, by kind.", ["kind"], registry=r
        )
        self.bad_rows = {kind: _Total(bad_rows.labels(kind)) for kind in bad_row_kinds}
        self.eval_games = Counter(
            "trainer_eval_games", "Games played by the periodic evaluations.", registry=r
        )
        self._last_counted_eval = -1
        self.state = Enum(
            "trainer_state", "Daemon state (stats.json state).", states=list(STATES), registry=r
        )
        Info("trainer", "What this daemon trains.", registry=r).info(
            {"env_id": env_id, "device": device, "batch_size": str(batch_size)}
        )

    def update(self, stats: dict[str, Any]) -> None:
        """Set every metric from a stats.json dict (a few dozen attribute sets)."""
        for key, g in self.gauges.items():
            value = stats.get(key)
            if isinstance(value, (int, float)):
                g.set(value)
        steps_per_sec = stats.get("steps_per_sec")
        if isinstance(steps_per_sec, (int, float)):
            self.step_seconds.set(1.0 / steps_per_sec if steps_per_sec > 0 else 0.0)
        for key, total in self.totals.items():
            total.follow(stats.get(key))
        for kind, total in self.bad_rows.items():
            total.follow(stats.get(f"bad_rows_{kind}"))
        if stats.get("state") in STATES:
            self.state.state(stats["state"])
        self._update_eval(stats)

    def _update_eval(self, stats: dict[str, Any]) -> None:
        last = stats.get("last_eval")
        if isinstance(last, dict):
            self.eval_win_rate.set(last.get("win_rate") or 0.0)
            self.eval_draw_rate.set(last.get("draw_rate") or 0.0)
        if isinstance(stats.get("last_eval_seconds"), (int, float)):
            self.eval_seconds.set(stats["last_eval_seconds"])
        for entry in stats.get("eval_history") or []:
            step = entry.get("step", -1) if isinstance(entry, dict) else -1
            if step > self._last_counted_eval:
                self.eval_games.inc(entry.get("games_played") or 0)
                self._last_counted_eval = step
