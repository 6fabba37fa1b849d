"""TensorBoard scalars of the daemon (`--tensorboard DIR`), from the figures of stats.json.

The x axis is the global training step, so a resumed run continues the same curves. On
start the writer purges every point at or after the first step this process will train
(`purge_step`): points a crashed run wrote after its last checkpoint disappear instead of
doubling back over the new ones. Points are written when stats.json is (at most twice a
second and at the final step); evaluations at the step of the model they played.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.config.loader import ConfigError
from trainer.hooks.metrics import StatsExporter

log = logging.getLogger(__name__)

# TensorBoard tag -> stats.json key
SCALARS = {
    "loss/total": "total_loss",
    "loss/policy": "policy_loss",
    "loss/value": "value_loss",
    "train/learning_rate": "learning_rate",
    "train/grad_norm": "grad_norm",
    "train/policy_entropy": "policy_entropy",
    "throughput/samples_per_sec": "samples_per_sec",
    "throughput/steps_per_sec": "steps_per_sec",
    "throughput/wait_fraction": "wait_fraction",
    "replay/window_size": "window_size",
    "replay/rows_seen": "rows_seen",
    "replay/reuse_ratio": "reuse_ratio",
}
EVAL_SCALARS = {"eval/win_rate": "win_rate", "eval/draw_rate": "draw_rate", "eval/loss_rate": "loss_rate"}
FLUSH_SECONDS = 10


def summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(or pip install 'selfplay-trainer[tensorboard]')"
        ) from None
    return SummaryWriter


class TensorBoardHook(StatsExporter):
    name = "tensorboard"

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer_class = summary_writer_class()  # fails before any waiting for data
        self.writer = None
        self.first_step = 1
        self.last_step = 0
        self.last_eval_step = 0

    def on_start(self, loop) -> None:
        self.first_step = loop.step + 1
        self.last_step = self.last_eval_step = self.first_step - 1
        self.writer = self.writer_class(
            str(self.log_dir), purge_step=self.first_step, flush_secs=FLUSH_SECONDS
        )

    def on_stats(self, stats: dict[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            self._write(stats)
            if stats.get("state") == "stopped":
                self.writer.close()
                self.writer = None
        except OSError as exc:  # a full disk must not kill training
            log.warning("could not write TensorBoard events to %s: %s", self.log_dir, exc)

    def _write(self, stats: dict[str, Any]) -> None:
        step = stats.get("step", 0)
        if isinstance(step, int) and step > self.last_step:
            for tag, key in SCALARS.items():
                value = stats.get(key)
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(tag, value, step)
            self.last_step = step
        for entry in stats.get("eval_history") or []:
            eval_step = entry.get("step") if isinstance(entry, dict) else None
            if isinstance(eval_step, int) and eval_step > self.last_eval_step:
                for tag, key in EVAL_SCALARS.items():
                    if isinstance(entry.get(key), (int, float)):
                        self.writer.add_scalar(tag, entry[key], eval_step)
                self.last_eval_step = eval_step
