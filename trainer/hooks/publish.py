"""Publish the policy-value net as ONNX every N steps, off the training thread.

The training thread only takes a CPU copy of the weights (milliseconds), the one copy a
publish makes; export, onnxruntime verification and the atomic renames run on a worker
thread and share it, so publishing does not stall training. If a publish is still running
when the next is due, the new one is skipped rather than queued (the next interval catches
up). A failed check is logged and counted, never fatal: actors keep the previous model.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from trainer.games import GameSpec
from trainer.hooks.base import Hook
from trainer.model.onnx_export import PublishError, inference_copy
from trainer.model.publish import publish_model, step_file_name
from trainer.training.loop import PUBLISHING

log = logging.getLogger(__name__)

# stats.json key of the newest published step file (the contract calls it `last_checkpoint`).
LAST_PUBLISHED_MODEL = "last_published_model"


class PublishHook(Hook):
    name = "publish"

    def __init__(
        self,
        model_dir: Path,
        spec: GameSpec,
        every: int,
        keep: int,
        provenance: dict[str, str],
        background: bool = True,
    ):
        """`provenance`: the run's fixed model metadata (env_id, mode, network, ...); the
        counters (step, samples trained, rows seen) are added at each publish."""
        self.model_dir, self.spec, self.every, self.keep = Path(model_dir), spec, every, keep
        self.provenance = dict(provenance)
        self.background = background
        self.last_model = ""
        self.last_publish_seconds = 0.0
        self.last_published_step = -1
        self.failures = 0
        self.published = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, loop, metrics) -> None:
        if self._thread is not None and self._thread.is_alive():
            log.debug("previous publish still running; skipping step %d", loop.step)
            return
        module, step, meta = self._snapshot(loop)
        if self.background:
            self._thread = threading.Thread(
                target=self._publish, args=(module, step, meta), name="publish", daemon=True
            )
            self._thread.start()
        else:
            self._publish(module, step, meta)

    def _snapshot(self, loop):
        module = inference_copy(loop.objective.export_module())
        meta = {
            **self.provenance,
            "step": str(loop.step),
            "samples_trained": str(loop.samples_trained),
            "rows_seen": str(loop.source_stats().get("rows_seen", 0)),
        }
        return module, loop.step, meta

    def _publish(self, module, step: int, meta: dict[str, str]) -> None:
        t0 = time.monotonic()
        try:
            result = publish_model(module, self.spec, self.model_dir, step, meta, self.keep)
        except PublishError as exc:
            with self._lock:
                self.failures += 1
            log.error("model for step %d NOT published (check failed): %s", step, exc)
            return
        except Exception:
            with self._lock:
                self.failures += 1
            log.exception("model for step %d NOT published", step)
            return
        with self._lock:
            self.last_model = str(result.path)
            self.last_publish_seconds = time.monotonic() - t0
            self.last_published_step = step
            self.published += 1
        log.info("published %s (%.2fs)", result.path.name, self.last_publish_seconds)

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def on_start(self, loop) -> None:
        # A clean stop publishes the final step after its checkpoint is saved, so a resumed
        # state's `last_model` can lag one publish behind: the folder knows better.
        final = self.model_dir / step_file_name(loop.step)
        if loop.step > 0 and final.is_file():
            self.last_model, self.last_published_step = str(final), loop.step

    def on_stop(self, loop) -> None:
        self.wait()
        if loop.step > 0 and loop.step != self.last_published_step:
            # The loop moves on to `stopped` once every hook is done; no phase to restore.
            loop.set_phase(PUBLISHING, f"final model at step {loop.step}")
            self._publish(*self._snapshot(loop))

    def state_dict(self) -> dict:
        return {"last_model": self.last_model, "failures": self.failures}

    def load_state_dict(self, state: dict) -> None:
        self.last_model = state.get("last_model", state.get("last_checkpoint", ""))  # older checkpoints
        self.failures = int(state.get("failures", 0))

    def stats(self) -> dict:
        with self._lock:
            return {
                "publishing": self._thread is not None and self._thread.is_alive(),
                LAST_PUBLISHED_MODEL: self.last_model,
                "last_publish_seconds": round(self.last_publish_seconds, 4),
                "publish_failures": self.failures,
                "models_published": self.published,
            }
