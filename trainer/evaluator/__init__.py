"""Evaluating a published model against baseline players (`python -m trainer.evaluator`)."""

from trainer.evaluator.match import (
    EvalResult,
    GameRecord,
    evaluate_model,
    evaluate_player,
    play_games,
    play_match,
    summarise,
    wilson_interval,
)

__all__ = [
    "EvalResult",
    "GameRecord",
    "evaluate_model",
    "evaluate_player",
    "play_games",
    "play_match",
    "summarise",
    "wilson_interval",
]
