"""Evaluate the published model against random every N steps, off the training thread.

Plays `latest.onnx` (what the actors use) with onnxruntime on a worker thread, so training
does not stall; results go to stats.json as `last_eval` / `eval_history` (contract
section 4) and survive restarts through the checkpoint.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from trainer.hooks.base import Hook
from trainer.model.onnx_export import read_model_metadata

log = logging.getLogger(__name__)

MAX_EVAL_HISTORY = 200


class EvalHook(Hook):
    name = "evaluate"

    def __init__(self, model_dir: Path, env_id: str, every: int, games: int, seed: int | None = None,
                 opponent: str = "random"):
        self.model = Path(model_dir) / "latest.onnx"
        self.env_id, self.every, self.games, self.opponent = env_id, every, games, opponent
        self.seed = seed
        self.history: list[dict] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_evaluated_step = -1

    def run(self, loop, metrics) -> None:
        if (self._thread is not None and self._thread.is_alive()) or not self.model.exists():
            return
        self._thread = threading.Thread(target=self._evaluate, name="evaluate", daemon=True)
        self._thread.start()

    def _evaluate(self) -> None:
        from trainer.evaluator import evaluate_model

        try:
            step = int(read_model_metadata(self.model).get("step", -1))
            if step == self._last_evaluated_step:
                return
            result = evaluate_model(self.model, env_id=self.env_id, opponent=self.opponent,
                                    games=self.games, seed=self.seed)
        except Exception:
            log.exception("evaluation of %s failed", self.model)
            return
        # The file may have been replaced between reading its step and loading it.
        if result.model_step is not None:
            step = result.model_step
        entry = result.to_eval_history_entry(step)
        with self._lock:
            self._last_evaluated_step = step
            self.history.append(entry)
            del self.history[:-MAX_EVAL_HISTORY]
        log.info("eval step %d vs %s: win %.2f draw %.2f loss %.2f (%d games)", step, self.opponent,
                 entry["win_rate"], entry["draw_rate"], entry["loss_rate"], entry["games_played"])

    def on_stop(self, loop) -> None:
        if self._thread is not None:
            self._thread.join(timeout=60)

    def state_dict(self) -> dict:
        with self._lock:
            return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def stats(self) -> dict:
        with self._lock:
            return {"last_eval": self.history[-1] if self.history else None, "eval_history": list(self.history)}
