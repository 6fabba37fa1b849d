"""Game rules shared by the trainer, the evaluator and the actor.

To add a game: write `trainer/games/<name>.py` with a `Game` subclass and add it to
`_GAMES` below.
"""

from __future__ import annotations

from trainer.games.base import DRAW, NO_WINNER, Game, GameSpec, GameState, Symmetry
from trainer.games.connect4 import ConnectFour
from trainer.games.tictactoe import TicTacToe

_GAMES: dict[str, type[Game]] = {cls.spec.env_id: cls for cls in (TicTacToe, ConnectFour)}

KNOWN_ENV_IDS = tuple(_GAMES)


def get_game(env_id: str) -> Game:
    try:
        return _GAMES[env_id]()
    except KeyError:
        raise ValueError(f"unknown env_id {env_id!r}; known games: {', '.join(_GAMES)}") from None


__all__ = [
    "DRAW", "NO_WINNER", "Game", "GameSpec", "GameState", "Symmetry",
    "KNOWN_ENV_IDS", "get_game",
]
