"""Per-game defaults: settings that replace a config's field defaults for one game.

A game's default applies only where the user left the setting unset (no flag, environment
variable or TOML key), so an explicit value always wins, even one equal to the field's own
default. The actor and the training daemon each keep their table beside their fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

GameDefaults = dict[str, dict[str, Any]]


def apply_game_defaults(cfg: BaseModel, table: GameDefaults) -> None:
    """Call from a `model_validator(mode="after")`; `cfg` must have an `env_id` field."""
    for name, value in table.get(cfg.env_id, {}).items():
        if name not in cfg.model_fields_set:
            # Not setattr: a config that validates assignments would run its validators again.
            object.__setattr__(cfg, name, value)


def describe_game_defaults(table: GameDefaults, field: str) -> str:
    """The sentence a field's --help description ends with."""
    games = [f"{env_id}: {d[field]}" for env_id, d in table.items() if field in d]
    return f" Unset: {'; '.join(games)}; other games the default." if games else ""
