"""Which game the data is for: a known game's `GameSpec`, or one built from the data.

obs_size comes from the observations; num_actions from the attributes, the legal masks, the
known game, or --num-actions, else max(action) + 1. If the data names a known game
(trainer.games), or has no name and its shapes match exactly one, that game's GameSpec is
used and the shapes must agree with it. Otherwise a GameSpec is built from the data:
legal_mask_offset from the attribute, else obs_size - num_actions - 2 (the contract layout:
stones, legal mask, two side-to-move floats; it only describes the model's input, no mask is
read from there), board_width = legal_mask_offset // 2 cells in one row.

`mask_in_obs` says whether the observation's legal-mask slice can stand in for missing
legal masks: true for a known game, or when the attribute legal_mask_offset is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.config.offline import MAX_ACTIONS
from trainer.games import KNOWN_ENV_IDS, GameSpec, get_game
from trainer.sources.offline_data.dataset import OfflineDataError, RawData


def resolve_spec(
    obs_size: int, num_actions: int | None, env_id: str | None, attrs: dict[str, Any], where: str
) -> tuple[GameSpec, bool]:
    """(spec, mask_in_obs): the known game the data is for, or a spec built from the data."""
    if env_id in KNOWN_ENV_IDS:
        spec = get_game(env_id).spec
        if obs_size != spec.obs_size:
            raise OfflineDataError(
                f"{where}: observations have {obs_size} numbers, {env_id} observations have {spec.obs_size}"
            )
        if num_actions is not None and num_actions != spec.num_actions:
            raise OfflineDataError(
                f"{where}: data has {num_actions} actions, {env_id} has {spec.num_actions}"
            )
        return spec, True
    if env_id is None:
        matches = [
            get_game(g).spec
            for g in KNOWN_ENV_IDS
            if get_game(g).spec.obs_size == obs_size and num_actions in (None, get_game(g).spec.num_actions)
        ]
        if len(matches) == 1:
            return matches[0], True
    if num_actions is None:
        raise OfflineDataError(
            f"{where}: cannot tell the number of actions (no legal masks, no num_actions attribute, no known game); pass --num-actions"
        )
    mask_in_obs = "legal_mask_offset" in attrs
    off = int(attrs.get("legal_mask_offset", max(0, obs_size - num_actions - 2)))
    if mask_in_obs and off + num_actions > obs_size:
        raise OfflineDataError(
            f"{where}: legal_mask_offset {off} + {num_actions} actions is beyond the observation size {obs_size}"
        )
    width = int(attrs.get("board_width", max(1, off // 2)))
    height = int(attrs.get("board_height", 1))
    name = env_id or f"custom_{obs_size}x{num_actions}"
    spec = GameSpec(
        env_id=name,
        display_name=name,
        board_width=width,
        board_height=height,
        num_actions=num_actions,
        obs_size=obs_size,
        legal_mask_offset=off,
        player_count=int(attrs.get("player_count", 2)),
    )
    return spec, mask_in_obs


def infer_spec(
    raw: RawData,
    obs_size: int,
    max_action: int,
    where: str,
    *,
    env_id: str | None,
    num_actions: int | None,
    player_count: int | None,
) -> tuple[GameSpec, bool]:
    """The spec of data that does not come with one. `max_action` is the largest action of
    the whole file (a streamed chunk's own would undercount); `player_count` overrides the
    data's attribute (it decides the sign of outcomes and of the IQL/CQL bootstrap)."""
    env_id = env_id or raw.attrs.get("env_id")
    a_count = num_actions or raw.attrs.get("num_actions")
    if raw.legal is not None:
        if a_count is not None and raw.legal.shape[1] != a_count:
            raise OfflineDataError(
                f"{where}: legal masks have {raw.legal.shape[1]} entries, the data says {a_count} actions"
            )
        a_count = raw.legal.shape[1]
    if a_count is None and env_id not in KNOWN_ENV_IDS:
        by_shape = [g for g in KNOWN_ENV_IDS if get_game(g).spec.obs_size == obs_size]
        if env_id is not None or len(by_shape) != 1:
            if max_action >= MAX_ACTIONS:
                raise OfflineDataError(
                    f"{where}: action {max_action} would make an action space beyond "
                    f"{MAX_ACTIONS} actions; pass --num-actions if the actions are right"
                )
            a_count = max(0, max_action) + 1
    attrs = raw.attrs if player_count is None else {**raw.attrs, "player_count": player_count}
    spec, mask_in_obs = resolve_spec(obs_size, a_count, env_id, attrs, where)
    if player_count is not None and spec.player_count != player_count:
        raise OfflineDataError(
            f"{where}: {spec.env_id} has {spec.player_count} players, not --player-count {player_count}"
        )
    return spec, mask_in_obs


def check_against_spec(raw: RawData, obs_size: int, spec: GameSpec, where: str) -> bool:
    """Validation data must have the training data's shapes; returns mask_in_obs."""
    if obs_size != spec.obs_size:
        raise OfflineDataError(
            f"{where}: observations have {obs_size} numbers, the training data has {spec.obs_size}"
        )
    return spec.env_id in KNOWN_ENV_IDS or "legal_mask_offset" in raw.attrs


def largest_action(actions: np.ndarray) -> int:
    """max(action) over the integers of a column (non-integers are the row checks' to name)."""
    if actions.dtype.kind == "f":
        actions = actions[np.isfinite(actions)]
    if actions.dtype.kind not in "iubf" or not actions.size:
        return -1
    return int(min(actions.max(), 2**62))
