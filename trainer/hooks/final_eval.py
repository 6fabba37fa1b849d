"""Play the run's final published model against a baseline once training ends.

The offline modes' `--eval-opponent SPEC`: after the publish hook has written the final
`latest.onnx`, the evaluator's match (`evaluate_model`, the same games and Wilson interval
as `python -m trainer.evaluator`) scores it; the result is printed as the evaluator prints
it and goes to stats.json as `final_eval`. A run stopped by a signal is not evaluated: its
user asked it to stop, not to play another hundred games.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.evaluator.match import EvalResult, evaluate_model
from trainer.hooks.base import Hook
from trainer.model.contract import LATEST_MODEL_NAME
from trainer.search.players import PlayStopped

log = logging.getLogger(__name__)

# The stats.json `final_eval` keys, taken from the evaluator's result.
FINAL_EVAL_KEYS = (
    "opponent",
    "model_step",
    "games_played",
    "wins",
    "draws",
    "losses",
    "score",
    "ci",
    "elo",
    "elo_ci",
    "elapsed_s",
)


class FinalEvalHook(Hook):
    name = "final_eval"

    def __init__(self, model_dir: Path, env_id: str, opponent: str, games: int, seed: int | None):
        self.model = Path(model_dir) / LATEST_MODEL_NAME
        self.env_id, self.opponent, self.games, self.seed = env_id, opponent, games, seed
        self.result: dict[str, Any] | None = None

    def on_stop(self, loop) -> None:
        if loop.step == 0 or not self.model.is_file():
            return
        if loop.stopping and loop.stop_reason.startswith("SIG"):
            log.info("final evaluation skipped: stopped by %s", loop.stop_reason)
            return
        # Stop requests from here on come from a signal: they end the games early.
        asked_before = loop.stopping
        try:
            result = evaluate_model(
                self.model,
                self.env_id,
                self.opponent,
                self.games,
                self.seed,
                should_stop=lambda: loop.stopping and not asked_before,
            )
        except PlayStopped:
            log.info("final evaluation dropped: stopping")
            return
        self.record(result)

    def record(self, result: EvalResult) -> None:
        from trainer.evaluator.__main__ import format_result

        full = result.to_dict()
        self.result = {k: full[k] for k in FINAL_EVAL_KEYS}
        print(format_result(result), flush=True)

    def stats(self) -> dict:
        return {"final_eval": self.result} if self.result is not None else {}
