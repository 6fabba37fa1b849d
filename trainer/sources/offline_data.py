"""Offline datasets: read HDF5 or JSONL, validate every number, hold the result as tensors.

Two file formats, one in-memory form (`OfflineDataset`, a bundle of aligned tensors):

HDF5 (`imitation`, also `bc`/`iql`/`cql`): one row per move.
    states | observations | obs        float [N, obs_size]                  required
    actions | action                   int   [N]                            required
    legal_masks | legal_mask           bool/0-1 [N, num_actions]            optional
    outcomes | game_outcome            float [N], final result, mover's view, in [-1, 1]
    rewards                            float [N], mover's view (+1 if the move won)
    dones | terminals                  bool  [N], 1 on a game's last ply
    timeouts                           bool  [N], 1 where a game was cut off (D4RL)
    next_states | next_observations    float [N, obs_size]
    next_legal_masks                   bool  [N, num_actions]
    episode_ids                        int   [N], consecutive rows of one game share it
  File attributes (all optional): env_id, num_actions, legal_mask_offset, board_width,
  board_height, player_count.

JSONL (`bc`, `split`, `iql`, `cql`): one game per line,
    {"episode_id": ..., "env_id": ... (optional), "steps": [{"observation": [...],
     "action": a, "reward": r, "done": d, "legal_mask": [...] (optional),
     "outcome": z (optional)}, ...]}
  `reward` may be left out where only the actions are learnt (bc); iql/cql need it on every
  step. `done` may be left out: a line is one whole game, so its last step is taken as done
  and the others not; write "done": false on the last step of a game that was cut off.
  A legal mask holds 0/1 or true/false.
  An observation may be a dict of numbers and (nested) lists: it is flattened in sorted key
  order (nested dicts too), each list row-major, so {"b": [[1, 2], [3, 4]], "a": 5} becomes
  [5, 1, 2, 3, 4]. An action may be given as `action_type` + `action_target`; the index is
  offsets[action_type] + action_target, offsets from --action-offsets.

Shapes come from the data: obs_size from the observations; num_actions from the attributes,
the legal masks, the known game, or --num-actions, else max(action) + 1. If the data names
a known game (trainer.games), or has no name and its shapes match exactly one, that game's
GameSpec is used and the shapes must agree with it. Otherwise a GameSpec is built from the
data: legal_mask_offset from the attribute, else obs_size - num_actions - 2 (the contract
layout: stones, legal mask, two side-to-move floats; it only describes the model's input,
no mask is read from there), board_width = legal_mask_offset // 2 cells in one row.

Legal masks: the data's own; else, for a known game or when the attribute
legal_mask_offset is given, the observation's mask slice; else every action is legal.

Outcomes (value-head targets): the data's own; else backfilled from the rewards of games
that end with done (contract rule: the last ply's reward z goes to every ply of the same
player, -z to the other's); else unknown (NaN in `value`, left out of the value loss).

Transitions for IQL/CQL never cross a game boundary: the next state of a ply is
`next_states` when given, else the following row of the same game; a game's last ply is
terminal if done, else (timeout or truncated file) it has no successor and is not used
for TD learning. IQL/CQL on HDF5 need `dones` (or `terminals`) even beside `next_states`:
nothing else tells a game's last ply from a cut-off one.

Large HDF5 files stream in chunks (`HDF5Chunks`); every chunk is checked once before
training starts, so a bad row deep in the file is an input error, not a failure hours in.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from trainer.games import KNOWN_ENV_IDS, GameSpec, get_game
from trainer.training.batch import Batch

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")

# First name found wins; D4RL spellings are accepted beside ours.
KEYS: dict[str, tuple[str, ...]] = {
    "obs": ("states", "observations", "obs"),
    "actions": ("actions", "action"),
    "legal": ("legal_masks", "legal_mask"),
    "outcomes": ("outcomes", "game_outcome"),
    "rewards": ("rewards",),
    "dones": ("dones", "terminals"),
    "timeouts": ("timeouts",),
    "next_obs": ("next_states", "next_observations"),
    "next_legal": ("next_legal_masks",),
    "episode_ids": ("episode_ids",),
}


class OfflineDataError(ValueError):
    """Bad input data; the message names the file and the key, row or line."""


# --- the in-memory form ------------------------------------------------------------------------

@dataclass
class RawData:
    """Numpy arrays as read, before validation; None = absent from the file."""

    obs: np.ndarray
    actions: np.ndarray
    legal: np.ndarray | None = None
    outcomes: np.ndarray | None = None
    rewards: np.ndarray | None = None
    dones: np.ndarray | None = None
    timeouts: np.ndarray | None = None
    next_obs: np.ndarray | None = None
    next_legal: np.ndarray | None = None
    episode_ids: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    row_names: list[str] | None = None  # "line 7 step 3" per row (JSONL), for messages


@dataclass
class OfflineDataset:
    spec: GameSpec
    obs: torch.Tensor  # float32 [N, obs_size]
    action: torch.Tensor  # int64 [N]
    legal_mask: torch.Tensor  # bool [N, A]
    value: torch.Tensor  # float32 [N]; NaN where the outcome is unknown
    episode: torch.Tensor  # int64 [N]; 0..E-1, rows of a game are consecutive
    reward: torch.Tensor | None = None  # float32 [N]
    done: torch.Tensor | None = None  # float32 [N]
    next_obs: torch.Tensor | None = None  # float32 [N, obs_size]
    next_legal_mask: torch.Tensor | None = None  # bool [N, A]
    has_next: torch.Tensor | None = None  # bool [N]: usable as a TD transition
    path: str = ""

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode[-1]) + 1 if len(self) else 0

    @property
    def has_transitions(self) -> bool:
        return self.next_obs is not None

    @property
    def has_values(self) -> bool:
        return bool(torch.isfinite(self.value).any())

    def to(self, device: torch.device | str) -> "OfflineDataset":
        return replace(self, **{
            f.name: getattr(self, f.name).to(device)
            for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)
        })

    def batch(self, idx: torch.Tensor) -> Batch:
        """Gather rows `idx` (an index tensor on the data's device): no Python per sample."""
        action = self.action[idx]
        legal = self.legal_mask[idx]
        policy = torch.zeros(legal.shape, dtype=torch.float32, device=legal.device)
        policy.scatter_(1, action.unsqueeze(1), 1.0)
        b = Batch(obs=self.obs[idx], legal_mask=legal, policy=policy, value=self.value[idx], action=action)
        if self.next_obs is not None:
            b.reward, b.done = self.reward[idx], self.done[idx]
            b.next_obs, b.next_legal_mask = self.next_obs[idx], self.next_legal_mask[idx]
        return b


# --- reading -----------------------------------------------------------------------------------

def data_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise OfflineDataError(f"{path}: unknown data format {suffix!r}; use .h5/.hdf5 (HDF5) or .jsonl (JSONL)")


def check_file(path: Path) -> None:
    if not path.exists():
        raise OfflineDataError(f"{path}: file not found")
    if not path.is_file():
        raise OfflineDataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise OfflineDataError(f"{path}: empty file")


def load_dataset(
    path: Path,
    *,
    transitions: bool,
    env_id: str | None = None,
    num_actions: int | None = None,
    action_offsets: dict[str, int] | None = None,
    spec: GameSpec | None = None,
    player_count: int | None = None,
) -> OfflineDataset:
    """Read, validate and tensorise a whole file. `spec` forces the game (validation data
    must match the training data)."""
    path = Path(path)
    check_file(path)
    if data_format(path) == "hdf5":
        raw = read_hdf5(path)
    else:
        raw = read_jsonl(path, action_offsets)
    return build_dataset(raw, str(path), transitions=transitions, env_id=env_id,
                         num_actions=num_actions, spec=spec, player_count=player_count)


# HDF5 ---------------------------------------------------------------------------------------

def _h5py():
    import h5py  # only HDF5 users pay for the import

    return h5py


def open_hdf5(path: Path):
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise OfflineDataError(f"{path}: not a readable HDF5 file ({exc})") from None


@contextmanager
def hdf5_damage(path: Path | str, name: str | None = None) -> Iterator[None]:
    """h5py finds a damaged file only when it touches the damaged part, which can be any
    metadata or data access; report it as bad input naming what was being read."""
    try:
        yield
    except (OSError, KeyError, RuntimeError) as exc:
        what = f"dataset '{name}'" if name else "file"
        raise OfflineDataError(f"{path}: {what} is damaged or truncated ({exc})") from None


def hdf5_keys(f, path: Path) -> dict[str, str]:
    """Our role -> the dataset name present in the file; checks the required ones exist."""
    found = {}
    for role, names in KEYS.items():
        for name in names:
            with hdf5_damage(path, name):
                present = name in f
                is_dataset = present and isinstance(f[name], _h5py().Dataset)
            if present:
                if not is_dataset:
                    raise OfflineDataError(f"{path}: '{name}' is a group, expected a dataset")
                found[role] = name
                break
    for role in ("obs", "actions"):
        if role not in found:
            raise OfflineDataError(
                f"{path}: missing dataset '{KEYS[role][0]}' (or {', '.join(repr(k) for k in KEYS[role][1:])}); "
                f"the file has: {', '.join(sorted(f.keys())) or 'nothing'}"
            )
    n = f[found["obs"]].shape[0] if f[found["obs"]].ndim else 0
    for role, name in found.items():
        ds = f[name]
        if ds.ndim == 0 or ds.shape[0] != n:
            raise OfflineDataError(
                f"{path}: dataset '{name}' has shape {ds.shape}, expected {n} rows like '{found['obs']}'"
            )
        want_2d = role in ("obs", "legal", "next_obs", "next_legal")
        if want_2d and ds.ndim != 2:
            raise OfflineDataError(f"{path}: dataset '{name}' has shape {ds.shape}, expected [rows, width]")
        if not want_2d and not (ds.ndim == 1 or (ds.ndim == 2 and ds.shape[1] == 1)):
            raise OfflineDataError(f"{path}: dataset '{name}' has shape {ds.shape}, expected [rows]")
    return found


def hdf5_attrs(f) -> dict[str, Any]:
    out = {}
    with hdf5_damage(f.filename):
        for k in ("env_id", "num_actions", "legal_mask_offset", "board_width", "board_height", "player_count"):
            if k in f.attrs:
                v = f.attrs[k]
                v = v.decode() if isinstance(v, bytes) else v
                try:
                    out[k] = str(v) if k == "env_id" else int(v)
                except (TypeError, ValueError):
                    raise OfflineDataError(f"{f.filename}: attribute '{k}' is {v!r}, expected an integer") from None
    return out


def read_hdf5_column(f, role: str, name: str, start: int, stop: int) -> np.ndarray:
    with hdf5_damage(f.filename, name):
        a = f[name][start:stop]
    if a.ndim == 2 and role not in ("obs", "legal", "next_obs", "next_legal"):
        a = a[:, 0]
    return a


def read_hdf5_rows(f, keys: dict[str, str], start: int, stop: int) -> RawData:
    arrays = {role: read_hdf5_column(f, role, name, start, stop) for role, name in keys.items()}
    return RawData(**arrays, attrs=hdf5_attrs(f))


def read_hdf5(path: Path) -> RawData:
    with open_hdf5(path) as f:
        keys = hdf5_keys(f, path)
        return read_hdf5_rows(f, keys, 0, f[keys["obs"]].shape[0])


# JSONL --------------------------------------------------------------------------------------

def parse_action_offsets(text: str | None) -> dict[str, int] | None:
    """--action-offsets: inline JSON, or a .json/.toml file, mapping action_type -> offset."""
    if text is None:
        return None
    where = "--action-offsets"
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            p = Path(text)
            where = str(p)
            if not p.exists():
                raise OfflineDataError(f"{p}: action offsets file not found")
            data = tomllib.loads(p.read_text()) if p.suffix.lower() == ".toml" else json.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise OfflineDataError(f"{where}: not a valid mapping of action_type -> offset ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise OfflineDataError(f"{where}: expected a non-empty mapping of action_type -> offset")
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise OfflineDataError(f"{where}: offset of action_type {k!r} must be a non-negative integer, got {v!r}")
    return {str(k): int(v) for k, v in data.items()}


def flatten_observation(obs: Any) -> np.ndarray:
    """A list/number, or a dict of them, as one float vector (see the module docstring)."""
    if isinstance(obs, dict):
        if not obs:
            raise ValueError("observation is an empty dict")
        return np.concatenate([flatten_observation(obs[k]) for k in sorted(obs)])
    if isinstance(obs, bool) or isinstance(obs, (int, float)):
        return np.asarray([obs], dtype=np.float64)
    if isinstance(obs, list):
        try:
            return np.asarray(obs, dtype=np.float64).ravel()
        except (ValueError, TypeError):
            raise ValueError("observation list is ragged or holds non-numbers") from None
    raise ValueError(f"observation holds a {type(obs).__name__}, expected numbers, lists or dicts")


def _obs_signature(obs: Any) -> Any:
    if isinstance(obs, dict):
        return tuple((k, _obs_signature(obs[k])) for k in sorted(obs))
    return None


def _action(step: dict, offsets: dict[str, int] | None) -> int:
    if "action" in step:
        a = step["action"]
    elif "action_type" in step:
        if offsets is None:
            raise ValueError("action given as action_type/action_target but no --action-offsets")
        t = str(step["action_type"])
        if t not in offsets:
            raise ValueError(f"action_type {t!r} is not in --action-offsets ({', '.join(sorted(offsets))})")
        target = step.get("action_target")
        if isinstance(target, bool) or not isinstance(target, int) or target < 0:
            raise ValueError(f"action_target must be a non-negative integer, got {target!r}")
        return offsets[t] + target
    else:
        raise ValueError("no 'action' (or 'action_type' + 'action_target')")
    if isinstance(a, float) and a.is_integer():
        a = int(a)
    if isinstance(a, bool) or not isinstance(a, int):
        raise ValueError(f"action must be an integer, got {a!r}")
    return a


def _number(step: dict, key: str) -> float:
    """The step's value of `key`, NaN when not given (so NaN itself is refused)."""
    v = step.get(key)
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key} must be a number, got {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{key} is {v}, expected a finite number")
    return float(v)


def read_jsonl(path: Path, action_offsets: dict[str, int] | None = None) -> RawData:
    obs, actions, legal, rewards, dones, outcomes, episode, names = [], [], [], [], [], [], [], []
    attrs: dict[str, Any] = {}
    signature = None
    has_legal: bool | None = None
    width = None
    n_episodes = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                ep = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                hint = " (truncated line?)" if not line.endswith(b"\n") or "Unterminated" in str(exc) or "Expecting" in str(exc) else ""
                raise OfflineDataError(f"{where}: malformed JSON{hint}: {exc}") from None
            if not isinstance(ep, dict) or not isinstance(ep.get("steps"), list):
                raise OfflineDataError(f"{where}: expected an object with a 'steps' list")
            if not ep["steps"]:
                raise OfflineDataError(f"{where}: episode has no steps")
            if "env_id" in ep and "env_id" not in attrs:
                attrs["env_id"] = str(ep["env_id"])
            for k, step in enumerate(ep["steps"]):
                at = f"{where} step {k}"
                try:
                    if not isinstance(step, dict):
                        raise ValueError("step is not an object")
                    if "observation" not in step:
                        raise ValueError("no 'observation'")
                    o = step["observation"]
                    sig = _obs_signature(o)
                    if signature is None:
                        signature = sig
                    elif sig != signature:
                        raise ValueError("observation keys differ from the first step's")
                    vec = flatten_observation(o)
                    if width is None:
                        width = vec.size
                    elif vec.size != width:
                        raise ValueError(f"observation has {vec.size} numbers, earlier steps have {width}")
                    a = _action(step, action_offsets)
                    m = step.get("legal_mask")
                    if has_legal is None:
                        has_legal = m is not None
                    if (m is not None) != has_legal:
                        raise ValueError("legal_mask present on some steps but not others")
                    if m is not None:
                        if not isinstance(m, list):
                            raise ValueError("legal_mask must be a list")
                        try:
                            m = np.asarray(m, dtype=np.float64)
                        except (ValueError, TypeError):
                            raise ValueError("legal_mask holds non-numbers") from None
                        if m.ndim != 1 or (legal and m.size != legal[0].size):
                            raise ValueError(f"legal_mask has {m.size} entries, earlier steps have {legal[0].size}")
                        legal.append(m)  # 0/1 is checked with the HDF5 masks in build_dataset
                    r = _number(step, "reward")
                    d = step.get("done")
                    if d is None:
                        d = k == len(ep["steps"]) - 1
                    if not (isinstance(d, bool) or (isinstance(d, int) and d in (0, 1))):
                        raise ValueError(f"done must be true/false, got {d!r}")
                    z = _number(step, "outcome" if "outcome" in step else "game_outcome")
                except ValueError as exc:
                    raise OfflineDataError(f"{at}: {exc}") from None
                obs.append(vec)
                actions.append(a)
                rewards.append(r)
                dones.append(bool(d))
                outcomes.append(z)
                episode.append(n_episodes)
                names.append(at)
            n_episodes += 1
    if not obs:
        raise OfflineDataError(f"{path}: no episodes (only blank lines)")
    outcomes_arr = np.asarray(outcomes, dtype=np.float64)
    return RawData(
        obs=np.stack(obs).astype(np.float64),
        actions=np.asarray(actions, dtype=np.int64),
        legal=np.stack(legal) if has_legal else None,
        outcomes=outcomes_arr if np.isfinite(outcomes_arr).any() else None,
        rewards=np.asarray(rewards, dtype=np.float64),  # NaN where a step has none
        dones=np.asarray(dones, dtype=bool),
        episode_ids=np.asarray(episode, dtype=np.int64),
        attrs=attrs,
        row_names=names,
    )


# --- validation and tensors ---------------------------------------------------------------------

def resolve_spec(obs_size: int, num_actions: int | None, env_id: str | None, attrs: dict[str, Any],
                 where: str) -> tuple[GameSpec, bool]:
    """(spec, mask_in_obs): the known game the data is for, or a spec built from the data."""
    if env_id in KNOWN_ENV_IDS:
        spec = get_game(env_id).spec
        if obs_size != spec.obs_size:
            raise OfflineDataError(f"{where}: observations have {obs_size} numbers, {env_id} observations have {spec.obs_size}")
        if num_actions is not None and num_actions != spec.num_actions:
            raise OfflineDataError(f"{where}: data has {num_actions} actions, {env_id} has {spec.num_actions}")
        return spec, True
    if env_id is None:
        matches = [
            get_game(g).spec for g in KNOWN_ENV_IDS
            if get_game(g).spec.obs_size == obs_size and num_actions in (None, get_game(g).spec.num_actions)
        ]
        if len(matches) == 1:
            return matches[0], True
    if num_actions is None:
        raise OfflineDataError(f"{where}: cannot tell the number of actions (no legal masks, no num_actions attribute, no known game); pass --num-actions")
    mask_in_obs = "legal_mask_offset" in attrs
    off = int(attrs.get("legal_mask_offset", max(0, obs_size - num_actions - 2)))
    if mask_in_obs and off + num_actions > obs_size:
        raise OfflineDataError(f"{where}: legal_mask_offset {off} + {num_actions} actions is beyond the observation size {obs_size}")
    width = int(attrs.get("board_width", max(1, off // 2)))
    height = int(attrs.get("board_height", 1))
    name = env_id or f"custom_{obs_size}x{num_actions}"
    spec = GameSpec(env_id=name, display_name=name, board_width=width, board_height=height,
                    num_actions=num_actions, obs_size=obs_size, legal_mask_offset=off,
                    player_count=int(attrs.get("player_count", 2)))
    return spec, mask_in_obs


def _first_bad_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


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
    """Validate `raw` and turn it into tensors. `row_offset` makes row numbers in messages
    absolute (streamed chunks); `keep_rows` drops a trailing look-ahead row of a chunk
    after it has served as the next state of the row before it; `max_action` is the
    file-wide max(action) when `raw` is one chunk, for inferring the action count;
    `player_count` overrides the data's `player_count` attribute (it decides the sign of
    outcomes and of the IQL/CQL bootstrap)."""
    n = len(raw.obs)
    jsonl = raw.row_names is not None

    def row_name(i: int) -> str:
        return raw.row_names[i] if raw.row_names else f"{where}: row {row_offset + i}"

    if n == 0:
        raise OfflineDataError(f"{where}: no samples")
    obs = np.asarray(raw.obs, dtype=np.float64)
    if not np.isfinite(obs).all():
        raise OfflineDataError(f"{row_name(_first_bad_row(~np.isfinite(obs)))}: observation has NaN or infinite numbers")
    actions = np.asarray(raw.actions)
    if actions.dtype.kind == "f":
        if not np.isfinite(actions).all() or (actions != np.round(actions)).any():
            i = int(np.flatnonzero(~np.isfinite(actions) | (actions != np.round(np.nan_to_num(actions))))[0])
            raise OfflineDataError(f"{row_name(i)}: action {actions[i]!r} is not an integer")
    elif actions.dtype.kind not in "iub":
        raise OfflineDataError(f"{where}: actions have type {actions.dtype}, expected integers")
    actions = actions.astype(np.int64)

    if spec is None:
        env_id = env_id or raw.attrs.get("env_id")
        a_count = num_actions or raw.attrs.get("num_actions")
        if raw.legal is not None:
            if a_count is not None and raw.legal.shape[1] != a_count:
                raise OfflineDataError(f"{where}: legal masks have {raw.legal.shape[1]} entries, the data says {a_count} actions")
            a_count = raw.legal.shape[1]
        if a_count is None and env_id not in KNOWN_ENV_IDS:
            by_shape = [g for g in KNOWN_ENV_IDS if get_game(g).spec.obs_size == obs.shape[1]]
            if env_id is not None or len(by_shape) != 1:
                a_count = (int(actions.max()) if max_action is None else max_action) + 1
        attrs = raw.attrs if player_count is None else {**raw.attrs, "player_count": player_count}
        spec, mask_in_obs = resolve_spec(obs.shape[1], a_count, env_id, attrs, where)
        if player_count is not None and spec.player_count != player_count:
            raise OfflineDataError(f"{where}: {spec.env_id} has {spec.player_count} players, not --player-count {player_count}")
    else:
        if obs.shape[1] != spec.obs_size:
            raise OfflineDataError(f"{where}: observations have {obs.shape[1]} numbers, the training data has {spec.obs_size}")
        mask_in_obs = spec.env_id in KNOWN_ENV_IDS or "legal_mask_offset" in raw.attrs
    a_n, off = spec.num_actions, spec.legal_mask_offset

    bad = (actions < 0) | (actions >= a_n)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise OfflineDataError(f"{row_name(i)}: action {actions[i]} is out of range [0, {a_n})")

    def mask_for(m: np.ndarray | None, o: np.ndarray, what: str) -> np.ndarray:
        if m is not None:
            m = np.asarray(m)
            if m.shape[1] != a_n:
                raise OfflineDataError(f"{where}: {what} has {m.shape[1]} entries, the game has {a_n} actions")
            if m.dtype.kind != "b":
                # Anything but 0/1 (NaN included) is a broken mask, not an illegal move.
                junk = (m != 0) & (m != 1)
                if junk.any():
                    i = _first_bad_row(junk)
                    raise OfflineDataError(f"{row_name(i)}: {what} holds {m[i][junk[i]][0]}, expected 0/1 or true/false")
            return m.astype(bool)
        if mask_in_obs:
            return o[:, off:off + a_n] > 0.5
        return np.ones((len(o), a_n), dtype=bool)

    legal = mask_for(raw.legal, obs, "legal mask")
    illegal = ~legal[np.arange(n), actions]
    if illegal.any():
        i = int(np.flatnonzero(illegal)[0])
        raise OfflineDataError(f"{row_name(i)}: action {actions[i]} is not legal under the row's legal mask")

    def vector(a: np.ndarray | None, what: str, lo: float | None = None) -> np.ndarray | None:
        """Checked floats. In JSONL NaN marks a step that left the value out (read_jsonl
        refuses a literal NaN), so it passes here and means unknown."""
        if a is None:
            return None
        a = np.asarray(a, dtype=np.float64)
        checked = np.where(np.isnan(a), 0.0, a) if jsonl else a
        if not np.isfinite(checked).all():
            raise OfflineDataError(f"{row_name(_first_bad_row(~np.isfinite(checked)))}: {what} is NaN or infinite")
        if lo is not None and (np.abs(checked) > lo).any():
            i = int(np.flatnonzero(np.abs(checked) > lo)[0])
            raise OfflineDataError(f"{row_name(i)}: {what} {a[i]} is outside [-{lo}, {lo}]")
        return a

    rewards = vector(raw.rewards, "reward")
    dones = None if raw.dones is None else np.asarray(raw.dones).astype(bool)
    timeouts = None if raw.timeouts is None else np.asarray(raw.timeouts).astype(bool)
    outcomes = vector(raw.outcomes, "outcome", 1.0)

    # Games: explicit ids, else cut after each done/timeout; rows of a game are consecutive.
    if raw.episode_ids is not None:
        ids = np.asarray(raw.episode_ids)
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
    episode = np.cumsum(starts) - 1
    last_of_episode = np.r_[episode[1:] != episode[:-1], True]
    last_index = np.flatnonzero(last_of_episode)[episode]

    if outcomes is None and rewards is not None and dones is not None:
        ended = dones[last_index]
        sign = np.where((last_index - np.arange(n)) % 2 == 0, 1.0, -1.0)
        if spec.player_count == 1:
            sign[:] = 1.0
        outcomes = np.where(ended, sign * rewards[last_index], np.nan)
        if np.nanmax(np.abs(outcomes), initial=0.0) > 1.0:
            outcomes = np.clip(outcomes, -1.0, 1.0)
    value = outcomes if outcomes is not None else np.full(n, np.nan)

    out: dict[str, Any] = {}
    if transitions:
        if rewards is None:
            raise OfflineDataError(f"{where}: offline RL needs rewards (dataset 'rewards')")
        if np.isnan(rewards).any():
            raise OfflineDataError(f"{row_name(int(np.flatnonzero(np.isnan(rewards))[0]))}: no 'reward' (offline RL needs one on every step)")
        if dones is None:
            raise OfflineDataError(
                f"{where}: offline RL needs dataset 'dones' (or 'terminals'): without it a game's last ply "
                "cannot be told from a cut-off one and the targets would bootstrap past the end of games"
            )
        done = dones
        if raw.next_obs is not None:
            next_obs = np.asarray(raw.next_obs, dtype=np.float64)
            if next_obs.shape[1] != obs.shape[1]:
                raise OfflineDataError(f"{where}: next observations have {next_obs.shape[1]} numbers, observations {obs.shape[1]}")
            if not np.isfinite(next_obs).all():
                raise OfflineDataError(f"{row_name(_first_bad_row(~np.isfinite(next_obs)))}: next observation has NaN or infinite numbers")
            next_legal = mask_for(raw.next_legal, next_obs, "next legal mask")
            has_next = np.ones(n, dtype=bool)
        else:
            # The following row of the same game; never across a game boundary.
            follow = np.minimum(np.arange(n) + 1, n - 1)
            same_game = ~last_of_episode
            next_obs = np.where(same_game[:, None], obs[follow], obs)
            next_legal = np.where(same_game[:, None], legal[follow], False)
            has_next = done | same_game
        next_legal = next_legal & ~done[:, None]
        out = dict(
            reward=torch.from_numpy(rewards.astype(np.float32)),
            done=torch.from_numpy(done.astype(np.float32)),
            next_obs=torch.from_numpy(next_obs.astype(np.float32)),
            next_legal_mask=torch.from_numpy(next_legal),
            has_next=torch.from_numpy(has_next),
        )

    ds = OfflineDataset(
        spec=spec,
        obs=torch.from_numpy(obs.astype(np.float32)),
        action=torch.from_numpy(actions),
        legal_mask=torch.from_numpy(legal),
        value=torch.from_numpy(value.astype(np.float32)),
        episode=torch.from_numpy(episode.astype(np.int64)),
        path=where,
        **out,
    )
    if keep_rows is not None and keep_rows < n:
        ds = replace(ds, **{
            f.name: getattr(ds, f.name)[:keep_rows]
            for f in fields(ds) if isinstance(getattr(ds, f.name), torch.Tensor)
        })
    return ds


# --- large HDF5 files: chunks ---------------------------------------------------------------------

def should_stream(path: Path, threshold_mb: float) -> bool:
    return data_format(path) == "hdf5" and os.path.getsize(path) > threshold_mb * 2**20


class HDF5Chunks:
    """A large HDF5 file read `chunk_rows` consecutive rows at a time.

    Each chunk is validated and tensorised like a whole file. One look-ahead row is read
    past the chunk's end so the chunk's last ply still gets its next state; outcomes are
    backfilled only for games that end inside the chunk (store `outcomes` to avoid that).
    """

    def __init__(self, path: Path, chunk_rows: int, *, transitions: bool, env_id: str | None = None,
                 num_actions: int | None = None, player_count: int | None = None):
        self.path, self.chunk_rows, self.transitions = Path(path), chunk_rows, transitions
        check_file(self.path)
        self.file = open_hdf5(self.path)
        try:
            self.keys = hdf5_keys(self.file, self.path)
            self.rows = int(self.file[self.keys["obs"]].shape[0])
            if self.rows == 0:
                raise OfflineDataError(f"{self.path}: no samples")
            self.spec = self._check_every_chunk(env_id, num_actions, player_count)
        except BaseException:
            self.file.close()
            raise

    @property
    def num_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)

    def load(self, index: int) -> OfflineDataset:
        return self._build(index, spec=self.spec)

    def _build(self, index: int, **how: Any) -> OfflineDataset:
        start = index * self.chunk_rows
        stop = min(self.rows, start + self.chunk_rows)
        raw = read_hdf5_rows(self.file, self.keys, start, min(self.rows, stop + 1))
        return build_dataset(raw, str(self.path), transitions=self.transitions, row_offset=start,
                             keep_rows=stop - start, **how)

    def _check_every_chunk(self, env_id: str | None, num_actions: int | None, player_count: int | None) -> GameSpec:
        """One pass over the file, a chunk in memory at a time, before training: training
        only meets a chunk when its turn comes, possibly after models were published. The
        spec comes from the first chunk, with any action count inferred from max(action)
        over the whole file, or later chunks could hold actions beyond it."""
        spec = self._build(0, env_id=env_id, num_actions=num_actions, max_action=self._max_action(),
                           player_count=player_count).spec
        for i in range(1, self.num_chunks):
            self._build(i, spec=spec)
        return spec

    def _max_action(self) -> int | None:
        """Over the actions column only; anything that is not an integer is left to the row
        checks in build_dataset, which name the row."""
        role, name = "actions", self.keys["actions"]
        top = None
        for start in range(0, self.rows, self.chunk_rows):
            a = read_hdf5_column(self.file, role, name, start, start + self.chunk_rows)
            if a.dtype.kind not in "iubf":
                return None
            a = a[np.isfinite(a)] if a.dtype.kind == "f" else a
            if a.size:
                top = int(a.max()) if top is None else max(top, int(a.max()))
        return top

    def __iter__(self) -> Iterator[OfflineDataset]:
        for i in range(self.num_chunks):
            yield self.load(i)

    def close(self) -> None:
        self.file.close()
