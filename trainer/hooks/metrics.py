"""Prometheus metrics of the daemon (`--metrics-port`), from the figures of stats.json.

The metrics are set from each stats.json the stats hook writes (it calls `on_stats` of its
listeners), never per training step: a scrape and the file then agree, and training pays
nothing between two writes (at most two a second, plus one per change of state).
"""

from __future__ import annotations

from typing import Any

from trainer.config.daemon import DaemonConfig
from trainer.hooks.base import Hook
from trainer.metrics.trainer_metrics import TrainerMetrics


class StatsExporter(Hook):
    """A hook that exports every stats.json the stats hook writes (its `listeners`)."""

    def on_stats(self, stats: dict[str, Any]) -> None: ...


class MetricsHook(StatsExporter):
    name = "metrics"

    def __init__(self, metrics: TrainerMetrics):
        self.metrics = metrics

    def on_stats(self, stats: dict[str, Any]) -> None:
        self.metrics.update(stats)


def serve_trainer_metrics(cfg: DaemonConfig) -> MetricsHook | None:
    """With --metrics-port: the endpoint is up (or exit 2) before any waiting for data."""
    if not cfg.metrics_port:
        return None
    from trainer.metrics.exporter import serve_metrics
    from trainer.replay.reader import BAD_REASONS

    metrics = TrainerMetrics(cfg.env_id, cfg.device, cfg.batch_size, BAD_REASONS)
    serve_metrics(metrics.registry, cfg.metrics_host, cfg.metrics_port)
    return MetricsHook(metrics)
