"""Reading the JSONL format into `RawData`: one game per line,

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

Each step is checked for its shape and types here, naming `file:line step k`; the numbers
themselves (finite in float32, actions in range, masks 0/1) are checked by
`validate.build_dataset`, the same for every format.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from trainer.sources.offline_data.dataset import OfflineDataError, RawData

# Actions are stored as int64; anything wider cannot be an index.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def brief(value: Any) -> str:
    """A value for a one-line message: a 400-digit number is cut short."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def parse_jsonl_line(line: bytes, where: str) -> Any:
    """One line as JSON. Besides malformed JSON, Python's parser refuses an integer of more
    than 4300 digits with a plain ValueError and deep nesting with RecursionError; all are
    bad input at `where`."""
    try:
        return json.loads(line)
    except RecursionError:
        raise OfflineDataError(f"{where}: malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        truncated = not line.endswith(b"\n") or "Unterminated" in str(exc) or "Expecting" in str(exc)
        hint = " (truncated line?)" if truncated and type(exc) is not ValueError else ""
        raise OfflineDataError(f"{where}: malformed JSON{hint}: {exc}") from None


def parse_episode_line(line: bytes, where: str) -> dict[str, Any]:
    """One game: an object with a non-empty 'steps' list."""
    ep = parse_jsonl_line(line, where)
    if not isinstance(ep, dict) or not isinstance(ep.get("steps"), list):
        raise OfflineDataError(f"{where}: expected an object with a 'steps' list")
    if not ep["steps"]:
        raise OfflineDataError(f"{where}: episode has no steps")
    return ep


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
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        if isinstance(exc, OfflineDataError):
            raise
        raise OfflineDataError(f"{where}: not a valid mapping of action_type -> offset ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise OfflineDataError(f"{where}: expected a non-empty mapping of action_type -> offset")
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= INT64_MAX:
            raise OfflineDataError(
                f"{where}: offset of action_type {k!r} must be a non-negative integer, got {brief(v)}"
            )
    return {str(k): int(v) for k, v in data.items()}


def flatten_observation(obs: Any) -> np.ndarray:
    """A list/number, or a dict of them, as one float vector (see the module docstring)."""
    if isinstance(obs, dict):
        if not obs:
            raise ValueError("observation is an empty dict")
        return np.concatenate([flatten_observation(obs[k]) for k in sorted(obs)])
    try:
        if isinstance(obs, bool) or isinstance(obs, (int, float)):
            return np.asarray([obs], dtype=np.float64)
        if isinstance(obs, list):
            try:
                return np.asarray(obs, dtype=np.float64).ravel()
            except (ValueError, TypeError):
                raise ValueError("observation list is ragged or holds non-numbers") from None
    except OverflowError:
        raise ValueError("observation holds an integer beyond the float range") from None
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
            raise ValueError(f"action_target must be a non-negative integer, got {brief(target)}")
        a = offsets[t] + target
    else:
        raise ValueError("no 'action' (or 'action_type' + 'action_target')")
    if isinstance(a, float) and a.is_integer():
        a = int(a)
    if isinstance(a, bool) or not isinstance(a, int):
        raise ValueError(f"action must be an integer, got {brief(a)}")
    if not INT64_MIN <= a <= INT64_MAX:
        raise ValueError(f"action {brief(a)} is out of range")
    return a


def _number(step: dict, key: str) -> float:
    """The step's value of `key`, NaN when not given (so NaN itself is refused)."""
    v = step.get(key)
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key} must be a number, got {brief(v)}")
    try:
        v = float(v)
    except OverflowError:
        raise ValueError(f"{key} {brief(v)} is beyond the float range") from None
    if not math.isfinite(v):
        raise ValueError(f"{key} is {v}, expected a finite number")
    return v


def _legal_mask(m: Any, width: int | None) -> np.ndarray:
    if not isinstance(m, list):
        raise ValueError("legal_mask must be a list")
    try:
        m = np.asarray(m, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise ValueError("legal_mask holds non-numbers") from None
    if m.ndim != 1 or (width is not None and m.size != width):
        raise ValueError(f"legal_mask has {m.size} entries, earlier steps have {width}")
    return m  # 0/1 is checked with the HDF5 masks in build_dataset


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
            ep = parse_episode_line(line, where)
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
                        legal.append(_legal_mask(m, legal[0].size if legal else None))
                    r = _number(step, "reward")
                    d = step.get("done")
                    if d is None:
                        d = k == len(ep["steps"]) - 1
                    if not (isinstance(d, bool) or (isinstance(d, int) and d in (0, 1))):
                        raise ValueError(f"done must be true/false, got {brief(d)}")
                    z = _number(step, "outcome" if "outcome" in step else "game_outcome")
                except RecursionError:
                    raise OfflineDataError(f"{at}: observation is nested too deeply") from None
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
        obs=np.stack(obs),
        actions=np.asarray(actions, dtype=np.int64),
        legal=np.stack(legal) if has_legal else None,
        outcomes=outcomes_arr if np.isfinite(outcomes_arr).any() else None,
        rewards=np.asarray(rewards, dtype=np.float64),  # NaN where a step has none
        dones=np.asarray(dones, dtype=bool),
        episode_ids=np.asarray(episode, dtype=np.int64),
        attrs=attrs,
        row_names=names,
    )
