"""The one validator: `RawData` from any reader -> a checked `OfflineDataset`.

`build_dataset` reads top to bottom as the steps below; each step refuses bad input with an
`OfflineDataError` naming the row (`file: row 7`, or `file:3 step 2` for JSONL):

1. observations and actions: numbers that stay finite once cast to float32, integer actions;
2. the game (`spec.py`), then actions within its action space;
3. legal masks: the data's own (0/1 only); else, for a known game or when the attribute
   legal_mask_offset is given, the observation's mask slice; else every action is legal.
   Every action must be legal under its row's mask;
4. rewards, outcomes (in [-1, 1]), dones and timeouts (0/1 only);
5. games: explicit episode ids, else a cut after each done/timeout;
6. value targets: the data's outcomes; else backfilled from the rewards of games that end
   with done (contract rule: the last ply's reward z goes to every ply of the same player,
   -z to the other's); else unknown (NaN, left out of the value loss);
7. for IQL/CQL, transitions that never cross a game boundary: the next state of a ply is
   `next_states` when given, else the following row of the same game; a game's last ply is
   terminal if done, else (timeout or truncated file) it has no successor and is not used
   for TD learning. IQL/CQL on HDF5 need `dones` (or `terminals`) even beside
   `next_states`: nothing else tells a game's last ply from a cut-off one.

Numbers are checked after the cast to float32, the type training uses: a float64 1e300 or
a JSON 1e39 is finite as read and infinite once cast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.games import GameSpec
from trainer.sources.offline_data.dataset import (
    OfflineDataError,
    OfflineDataset,
    RawData,
)
from trainer.sources.offline_data.spec import (
    check_against_spec,
    infer_spec,
    largest_action,
)

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Rows:
    """Names rows in messages: absolute row numbers for a streamed chunk, `file:line step k`
    for JSONL."""

    where: str
    offset: int = 0
    names: list[str] | None = None

    def __call__(self, i: int) -> str:
        return self.names[i] if self.names else f"{self.where}: row {self.offset + i}"


def first_bad_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


def float32_values(a: Any, what: str, rows: Rows, *, missing_is_nan: bool = False) -> np.ndarray:
    """`a` as float32 with every number finite. `missing_is_nan`: NaN marks a JSONL step that
    left the value out (read_jsonl refuses a literal NaN), so it passes and means unknown."""
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise OfflineDataError(f"{rows.where}: {what} has type {a.dtype}, expected numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = a.astype(np.float32)
    bad = ~np.isfinite(narrow)
    if missing_is_nan:
        bad &= ~np.isnan(a)
    if bad.any():
        i = first_bad_row(bad)
        value = a[i][bad[i]].flat[0] if a.ndim > 1 else a[i]
        if np.isfinite(value):
            raise OfflineDataError(
                f"{rows(i)}: {what} {value:g} is beyond the float32 range (+-{FLOAT32_MAX:.3g})"
            )
        raise OfflineDataError(
            f"{rows(i)}: {what} {'has NaN or infinite numbers' if a.ndim > 1 else 'is NaN or infinite'}"
        )
    return narrow


def zero_one(a: Any, what: str, rows: Rows) -> np.ndarray:
    """Flags (masks, dones, timeouts) as bool; anything but 0/1 (NaN included) is broken
    data, not a flag."""
    a = np.asarray(a)
    if a.dtype.kind == "b":
        return a
    if a.dtype.kind not in "iuf":
        raise OfflineDataError(f"{rows.where}: {what} has type {a.dtype}, expected 0/1 or true/false")
    junk = (a != 0) & (a != 1)
    if junk.any():
        i = first_bad_row(junk)
        value = a[i][junk[i]].flat[0] if a.ndim > 1 else a[i]
        raise OfflineDataError(f"{rows(i)}: {what} holds {value}, expected 0/1 or true/false")
    return a.astype(bool)


def integer_actions(actions: Any, rows: Rows) -> np.ndarray:
    """Actions as given (not yet cast: a float 1e30 or a uint64 would wrap in int64)."""
    actions = np.asarray(actions)
    if actions.dtype.kind == "f":
        not_int = ~np.isfinite(actions) | (actions != np.round(np.nan_to_num(actions)))
        if not_int.any():
            i = int(np.flatnonzero(not_int)[0])
            raise OfflineDataError(f"{rows(i)}: action {actions[i]!r} is not an integer")
    elif actions.dtype.kind not in "iub":
        raise OfflineDataError(f"{rows.where}: actions have type {actions.dtype}, expected integers")
    return actions


def actions_in_range(actions: np.ndarray, num_actions: int, rows: Rows) -> np.ndarray:
    bad = (actions < 0) | (actions >= num_actions)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        shown = int(actions[i]) if abs(actions[i]) < 2**63 else actions[i]
        raise OfflineDataError(f"{rows(i)}: action {shown} is out of range [0, {num_actions})")
    return actions.astype(np.int64)


def legal_masks(
    mask: np.ndarray | None, obs: np.ndarray, spec: GameSpec, mask_in_obs: bool, what: str, rows: Rows
) -> np.ndarray:
    if mask is not None:
        if mask.shape[1] != spec.num_actions:
            raise OfflineDataError(
                f"{rows.where}: {what} has {mask.shape[1]} entries, the game has {spec.num_actions} actions"
            )
        return zero_one(mask, what, rows)
    if mask_in_obs:
        return spec.legal_masks(obs)
    return np.ones((len(obs), spec.num_actions), dtype=bool)


def actions_are_legal(actions: np.ndarray, legal: np.ndarray, rows: Rows) -> None:
    illegal = ~legal[np.arange(len(actions)), actions]
    if illegal.any():
        i = int(np.flatnonzero(illegal)[0])
        raise OfflineDataError(f"{rows(i)}: action {actions[i]} is not legal under the row's legal mask")


def outcomes_in_range(outcomes: np.ndarray | None, rows: Rows) -> np.ndarray | None:
    if outcomes is not None and (np.abs(outcomes) > 1.0).any():
        i = int(np.flatnonzero(np.abs(outcomes) > 1.0)[0])
        raise OfflineDataError(f"{rows(i)}: outcome {outcomes[i]} is outside [-1, 1]")
    return outcomes


def episode_index(
    episode_ids: np.ndarray | None, dones: np.ndarray | None, timeouts: np.ndarray | None, n: int
) -> np.ndarray:
    """0..E-1 per row; explicit ids, else a cut after each done/timeout; rows of a game are
    consecutive."""
    if episode_ids is not None:
        ids = np.asarray(episode_ids)
        starts = np.r_[True, ids[1:] != ids[:-1]]
    else:
        ends = np.zeros(n, dtype=bool)
        if dones is not None:
            ends |= dones
        if timeouts is not None:
            ends |= timeouts
        if dones is None and timeouts is None:
            ends[:] = True  # no game structure: every row stands alone
        starts = np.r_[True, ends[:-1]]
    return np.cumsum(starts) - 1


def last_rows(episode: np.ndarray) -> np.ndarray:
    """Bool per row: the last row of its game."""
    return np.r_[episode[1:] != episode[:-1], True]


def backfilled_outcomes(
    rewards: np.ndarray, dones: np.ndarray, episode: np.ndarray, player_count: int
) -> np.ndarray:
    """The last ply's reward, sign-flipped for the other player's plies; NaN in games that
    do not end with done."""
    n = len(episode)
    last_index = np.flatnonzero(last_rows(episode))[episode]
    sign = np.where((last_index - np.arange(n)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    if player_count == 1:
        sign[:] = 1.0
    outcomes = np.where(dones[last_index], sign * rewards[last_index], np.nan).astype(np.float32)
    return np.clip(outcomes, -1.0, 1.0)


def transition_tensors(
    raw: RawData,
    obs: np.ndarray,
    legal: np.ndarray,
    rewards: np.ndarray | None,
    dones: np.ndarray | None,
    episode: np.ndarray,
    spec: GameSpec,
    mask_in_obs: bool,
    rows: Rows,
) -> dict[str, torch.Tensor]:
    where, n = rows.where, len(obs)
    if rewards is None:
        raise OfflineDataError(f"{where}: offline RL needs rewards (dataset 'rewards')")
    if np.isnan(rewards).any():
        raise OfflineDataError(
            f"{rows(int(np.flatnonzero(np.isnan(rewards))[0]))}: no 'reward' (offline RL needs one on every step)"
        )
    if dones is None:
        raise OfflineDataError(
            f"{where}: offline RL needs dataset 'dones' (or 'terminals'): without it a game's last ply "
            "cannot be told from a cut-off one and the targets would bootstrap past the end of games"
        )
    if raw.next_obs is not None:
        next_obs = float32_values(raw.next_obs, "next observation", rows)
        if next_obs.shape[1] != obs.shape[1]:
            raise OfflineDataError(
                f"{where}: next observations have {next_obs.shape[1]} numbers, observations {obs.shape[1]}"
            )
        next_legal = legal_masks(raw.next_legal, next_obs, spec, mask_in_obs, "next legal mask", rows)
        has_next = np.ones(n, dtype=bool)
    else:
        # The following row of the same game; never across a game boundary.
        follow = np.minimum(np.arange(n) + 1, n - 1)
        same_game = ~last_rows(episode)
        next_obs = np.where(same_game[:, None], obs[follow], obs)
        next_legal = np.where(same_game[:, None], legal[follow], False)
        has_next = dones | same_game
    return dict(
        reward=torch.from_numpy(rewards),
        done=torch.from_numpy(dones.astype(np.float32)),
        next_obs=torch.from_numpy(next_obs),
        next_legal_mask=torch.from_numpy(next_legal & ~dones[:, None]),
        has_next=torch.from_numpy(has_next),
    )


def build_dataset(
    raw: RawData,
    where: str,
    *,
    transitions: bool,
    env_id: str | None = None,
    num_actions: int | None = None,
    spec: GameSpec | None = None,
    row_offset: int = 0,
    keep_rows: int | None = None,
    max_action: int | None = None,
    player_count: int | None = None,
) -> OfflineDataset:
    """Validate `raw` and turn it into tensors. `spec` forces the game (validation data must
    match the training data); `row_offset` makes row numbers in messages absolute (streamed
    chunks); `keep_rows` drops a trailing look-ahead row of a chunk after it has served as
    the next state of the row before it; `max_action` is the file-wide max(action) when
    `raw` is one chunk; `player_count` overrides the data's `player_count` attribute."""
    rows = Rows(where, row_offset, raw.row_names)
    jsonl = raw.row_names is not None
    if len(raw.obs) == 0:
        raise OfflineDataError(f"{where}: no samples")

    # 1-2. observations, actions, the game
    obs = float32_values(raw.obs, "observation", rows)
    actions = integer_actions(raw.actions, rows)
    if spec is None:
        top = largest_action(actions) if max_action is None else max_action
        spec, mask_in_obs = infer_spec(
            raw, obs.shape[1], top, where, env_id=env_id, num_actions=num_actions, player_count=player_count
        )
    else:
        mask_in_obs = check_against_spec(raw, obs.shape[1], spec, where)
    actions = actions_in_range(actions, spec.num_actions, rows)

    # 3. legal masks
    legal = legal_masks(raw.legal, obs, spec, mask_in_obs, "legal mask", rows)
    actions_are_legal(actions, legal, rows)

    # 4. per-row numbers and flags
    rewards = (
        None if raw.rewards is None else float32_values(raw.rewards, "reward", rows, missing_is_nan=jsonl)
    )
    outcomes = (
        None if raw.outcomes is None else float32_values(raw.outcomes, "outcome", rows, missing_is_nan=jsonl)
    )
    outcomes = outcomes_in_range(outcomes, rows)
    dones = None if raw.dones is None else zero_one(raw.dones, "done", rows)
    timeouts = None if raw.timeouts is None else zero_one(raw.timeouts, "timeout", rows)

    # 5-6. games and value targets
    episode = episode_index(raw.episode_ids, dones, timeouts, len(obs))
    if outcomes is None and rewards is not None and dones is not None:
        outcomes = backfilled_outcomes(rewards, dones, episode, spec.player_count)
    value = outcomes if outcomes is not None else np.full(len(obs), np.nan, dtype=np.float32)

    # 7. transitions
    extra = (
        transition_tensors(raw, obs, legal, rewards, dones, episode, spec, mask_in_obs, rows)
        if transitions
        else {}
    )

    ds = OfflineDataset(
        spec=spec,
        obs=torch.from_numpy(obs),
        action=torch.from_numpy(actions),
        legal_mask=torch.from_numpy(legal),
        value=torch.from_numpy(value),
        episode=torch.from_numpy(episode.astype(np.int64)),
        path=where,
        **extra,
    )
    return ds.head(keep_rows) if keep_rows is not None and keep_rows < len(ds) else ds
