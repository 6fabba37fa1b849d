"""Game rules shared by the trainer, the evaluator and the actor.

To add a game, write one file `trainer/games/<name>.py` defining a concrete `Game` subclass
with a `spec` (a `GameSpec` whose `env_id` is new). Nothing else needs editing: at import
this package imports each of its modules (except `base` and names starting with `_`) and
registers every concrete `Game` subclass defined there, keyed by `spec.env_id`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

from trainer.games.base import DRAW, NO_WINNER, Game, GameSpec, GameState, Symmetry

# Modules of this package that hold no game of their own.
_NOT_GAME_MODULES = frozenset({"base"})


def discover_games(package: ModuleType | None = None) -> dict[str, type[Game]]:
    """{env_id: Game subclass} for every game module in `package` (default: this one).

    Only classes defined in the module itself count, so a module importing another game's
    class does not register it twice. Two games claiming one env_id is an error, not a
    silent override.
    """
    package = package if package is not None else importlib.import_module(__name__)
    found: dict[str, type[Game]] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.ispkg or info.name.startswith("_") or info.name in _NOT_GAME_MODULES:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, Game) or inspect.isabstract(cls) or cls.__module__ != module.__name__:
                continue
            spec = getattr(cls, "spec", None)
            if not isinstance(spec, GameSpec):
                raise TypeError(f"{module.__name__}.{cls.__name__} is a Game without a GameSpec `spec`")
            if spec.env_id in found:
                other = found[spec.env_id]
                raise ValueError(
                    f"env_id {spec.env_id!r} is claimed by both {other.__module__}.{other.__name__} "
                    f"and {module.__name__}.{cls.__name__}"
                )
            found[spec.env_id] = cls
    return found


_GAMES: dict[str, type[Game]] = discover_games()

KNOWN_ENV_IDS = tuple(_GAMES)


def get_game(env_id: str) -> Game:
    try:
        return _GAMES[env_id]()
    except KeyError:
        raise ValueError(f"unknown env_id {env_id!r}; known games: {', '.join(_GAMES)}") from None


__all__ = [
    "DRAW",
    "NO_WINNER",
    "Game",
    "GameSpec",
    "GameState",
    "Symmetry",
    "KNOWN_ENV_IDS",
    "discover_games",
    "get_game",
]
