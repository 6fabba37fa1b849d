"""Evaluate the published model against random every N steps, off the training thread.

Plays `latest.onnx` (what the actors use) with onnxruntime on a worker thread, so training
does not stall; results go to stats.json as `last_eval` / `eval_history` (contract
section 4) and survive restarts through the checkpoint.

Stopping does not wait for an evaluation: the games check a stop flag before every round of
moves and an interrupted evaluation is dropped, so the daemon writes its final stats.json well
inside the launcher's (and compose's) grace period instead of being SIGKILLed first.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from trainer.evaluator.match import evaluate_model
from trainer.hooks.base import Hook
from trainer.model.contract import LATEST_MODEL_NAME, read_model_metadata
from trainer.search.players import PlayStopped

log = logging.getLogger(__name__)

MAX_EVAL_HISTORY = 200
# How long on_stop waits for an evaluation to notice the stop flag: one round of moves.
STOP_WAIT_S = 3.0


class EvalHook(Hook):
    name = "evaluate"

    def __init__(self, model_dir: Path, env_id: str, every: int, games: int, seed: int | None = None,
                 opponent: str = "random"):
        self.model = Path(model_dir) / LATEST_MODEL_NAME
        self.env_id, self.every, self.games, self.opponent = env_id, every, games, opponent
        self.seed = seed
        self.history: list[dict] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._last_evaluated_step = -1

    def run(self, loop, metrics) -> None:
        if (self._thread is not None and self._thread.is_alive()) or not self.model.exists():
            return
        # The loop's stop event is set by the signal itself, before any hook's on_stop (the
        # checkpoint's included), so an evaluation gives up as soon as stopping begins.
        stop_event = loop.stop_event
        stopping = lambda: self._stopping.is_set() or stop_event.is_set()  # noqa: E731
        self._thread = threading.Thread(target=self._evaluate, args=(stopping,), name="evaluate", daemon=True)
        self._thread.start()

    def _evaluate(self, stopping: Callable[[], bool]) -> None:
        try:
            step = int(read_model_metadata(self.model).get("step", -1))
            if step == self._last_evaluated_step:
                return
            result = evaluate_model(self.model, self.env_id, self.opponent, self.games, self.seed,
                                    should_stop=stopping)
        except PlayStopped:
            log.info("evaluation of step %d dropped: stopping", step)
            return
        except Exception:
            log.exception("evaluation of %s failed", self.model)
            return
        # The file may have been replaced between reading its step and loading it.
        if result.model_step is not None:
            step = result.model_step
        entry = result.to_eval_history_entry(step)
        with self._lock:
            if stopping():
                return  # the final checkpoint may be written already: keep stats.json in step with it
            self._last_evaluated_step = step
            self.history.append(entry)
            del self.history[:-MAX_EVAL_HISTORY]
        log.info("eval step %d vs %s: win %.2f draw %.2f loss %.2f (%d games)", step, self.opponent,
                 entry["win_rate"], entry["draw_rate"], entry["loss_rate"], entry["games_played"])

    def on_stop(self, loop) -> None:
        with self._lock:
            self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("evaluation still running after %.0f s; not waiting for it", STOP_WAIT_S)

    def state_dict(self) -> dict:
        with self._lock:
            return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def stats(self) -> dict:
        with self._lock:
            return {"last_eval": self.history[-1] if self.history else None, "eval_history": list(self.history)}
