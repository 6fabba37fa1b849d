"""Evaluate the published model against random every N steps, off the training thread.

Plays `latest.onnx` (what the actors use) with onnxruntime on a worker thread, so training
does not stall; results go to stats.json as `last_eval` / `eval_history` (contract
section 4) and survive restarts through the checkpoint.

With a gate, the same worker thread then plays the model against `best.onnx` in colour-swapped
pairs until an SPRT decides, and replaces `best.onnx` (atomically, the bytes that were
played) only when the new model is stronger; the first model evaluated becomes the first best.
`latest.onnx` is published as before: actors never wait for a gate.

Stopping does not wait for an evaluation: the games check a stop flag before every round of
moves and an interrupted evaluation is dropped, so the daemon writes its final stats.json well
inside the launcher's (and compose's) grace period instead of being SIGKILLed first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.atomic_files import atomic_write_bytes, finite_or_none
from trainer.evaluator.match import evaluate_model
from trainer.hooks.base import Hook
from trainer.model.contract import LATEST_MODEL_NAME, read_model_metadata
from trainer.search.players import PlayStopped

log = logging.getLogger(__name__)

MAX_EVAL_HISTORY = 200
# How long on_stop waits for an evaluation to notice the stop flag: one round of moves.
STOP_WAIT_S = 3.0


BEST_MODEL_NAME = "best.onnx"
# Gate games sample the raw policy: two greedy players would repeat the same two games.
GATE_TEMPERATURE = 1.0


@dataclass
class Gate:
    """Best-model tracking: at most `games` games against best.onnx, SPRT (elo0, elo1)."""

    games: int = 400
    elo: tuple[float, float] = (0.0, 50.0)


class EvalHook(Hook):
    name = "evaluate"

    def __init__(
        self,
        model_dir: Path,
        env_id: str,
        every: int,
        games: int,
        seed: int | None = None,
        opponent: str = "random",
        gate: Gate | None = None,
    ):
        self.model = Path(model_dir) / LATEST_MODEL_NAME
        self.best = Path(model_dir) / BEST_MODEL_NAME
        self.env_id, self.every, self.games, self.opponent = env_id, every, games, opponent
        self.seed = seed
        self.gate = gate
        self.best_step: int | None = None
        self.last_gate: dict | None = None
        self.history: list[dict] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._last_evaluated_step = -1
        self.last_eval_seconds = 0.0

    def run(self, loop, metrics) -> None:
        if (self._thread is not None and self._thread.is_alive()) or not self.model.exists():
            return
        # The loop's stop event is set by the signal itself, before any hook's on_stop (the
        # checkpoint's included), so an evaluation gives up as soon as stopping begins.
        stopping = lambda: self._stopping.is_set() or loop.stopping  # noqa: E731
        self._thread = threading.Thread(target=self._evaluate, args=(stopping,), name="evaluate", daemon=True)
        self._thread.start()

    def _evaluate(self, stopping: Callable[[], bool]) -> None:
        try:
            step = int(read_model_metadata(self.model).get("step", -1))
            if step == self._last_evaluated_step:
                return
            t0 = time.monotonic()
            result = evaluate_model(
                self.model, self.env_id, self.opponent, self.games, self.seed, should_stop=stopping
            )
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
            self.last_eval_seconds = time.monotonic() - t0
            self.history.append(entry)
            del self.history[:-MAX_EVAL_HISTORY]
        log.info(
            "eval step %d vs %s: win %.2f draw %.2f loss %.2f (%d games)",
            step,
            self.opponent,
            entry["win_rate"],
            entry["draw_rate"],
            entry["loss_rate"],
            entry["games_played"],
        )
        if self.gate is not None:
            try:
                self._gate(step, stopping)
            except PlayStopped:
                log.info("gate of step %d dropped: stopping", step)
            except Exception:
                log.exception("gate of %s against %s failed", self.model, self.best)

    def _gate(self, step: int, stopping: Callable[[], bool]) -> None:
        """Play the bytes of latest.onnx (read once: the file may be replaced meanwhile)
        against best.onnx and promote them if the SPRT says they are stronger."""
        assert self.gate is not None
        data = self.model.read_bytes()
        if not self.best.exists():
            self._promote(data, None)
            return
        fd, name = tempfile.mkstemp(
            prefix=f".{BEST_MODEL_NAME}.candidate.", suffix=".tmp", dir=self.best.parent
        )
        candidate = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            result = evaluate_model(
                candidate,
                self.env_id,
                f"model:{self.best}",
                self.gate.games,
                self.seed,
                temperature=GATE_TEMPERATURE,
                sprt_elo=self.gate.elo,
                should_stop=stopping,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
        assert result.sprt is not None
        promoted = result.sprt.decision == "H1"
        with self._lock:
            if stopping():
                return
            self.last_gate = {
                "step": result.model_step,
                "best_step": self.best_step,
                "result": result.sprt.decision,
                "promoted": promoted,
                "llr": result.sprt.llr,
                "elo": result.elo,
                "elo_ci": list(result.elo_ci),
                "games_played": result.games_played,
            }
        log.info(
            "gate step %s vs best step %s: %s (LLR %.2f, Elo %+.0f, %d games)",
            result.model_step,
            self.best_step,
            result.sprt.decision,
            result.sprt.llr,
            result.elo,
            result.games_played,
        )
        if promoted:
            self._promote(data, result.model_step)

    def _promote(self, data: bytes, step: int | None) -> None:
        atomic_write_bytes(self.best, data)
        if step is None:
            step = read_model_metadata(self.best).get("step")
        with self._lock:
            self.best_step = int(step) if step is not None else None
        log.info("best.onnx is now step %s", self.best_step)

    def on_stop(self, loop) -> None:
        with self._lock:
            self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
            if self._thread.is_alive():
                log.warning("evaluation still running after %.0f s; not waiting for it", STOP_WAIT_S)

    def state_dict(self) -> dict:
        with self._lock:
            return {"history": list(self.history), "best_step": self.best_step, "last_gate": self.last_gate}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.best_step = state.get("best_step")
        self.last_gate = state.get("last_gate")

    def stats(self) -> dict:
        with self._lock:
            out = {
                "last_eval": self.history[-1] if self.history else None,
                "eval_history": list(self.history),
                "last_eval_seconds": round(self.last_eval_seconds, 3),
            }
            if self.gate is not None:
                out.update(best_model_step=self.best_step, last_gate=finite_or_none(self.last_gate))
            return out
