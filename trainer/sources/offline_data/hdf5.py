"""Reading the HDF5 format into `RawData`: one row per move.

    states | observations | obs        float [N, obs_size]                  required
    actions | action                   int   [N]                            required
    legal_masks | legal_mask           bool/0-1 [N, num_actions]            optional
    outcomes | game_outcome            float [N], final result, mover's view, in [-1, 1]
    rewards                            float [N], mover's view (+1 if the move won)
    dones | terminals                  bool/0-1 [N], 1 on a game's last ply
    timeouts                           bool/0-1 [N], 1 where a game was cut off (D4RL)
    next_states | next_observations    float [N, obs_size]
    next_legal_masks                   bool/0-1 [N, num_actions]
    episode_ids                        int   [N], consecutive rows of one game share it

File attributes (all optional): env_id, num_actions, legal_mask_offset, board_width,
board_height, player_count. The first dataset name found wins; D4RL spellings are accepted
beside ours. Only the file's structure is checked here; the numbers are checked by
`validate.build_dataset`, the same for every format.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config.offline import MAX_ACTIONS
from trainer.sources.offline_data.dataset import OfflineDataError, RawData

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
TWO_D_ROLES = ("obs", "legal", "next_obs", "next_legal")

# Inclusive ranges of the integer attributes: anything outside would size a tensor wrongly
# or index past the observation.
ATTR_RANGES: dict[str, tuple[int, int]] = {
    "num_actions": (1, MAX_ACTIONS),
    "legal_mask_offset": (0, 2**31 - 1),
    "board_width": (1, 2**16),
    "board_height": (1, 2**16),
    "player_count": (1, 2),
}


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
        want_2d = role in TWO_D_ROLES
        if want_2d and ds.ndim != 2:
            raise OfflineDataError(f"{path}: dataset '{name}' has shape {ds.shape}, expected [rows, width]")
        if not want_2d and not (ds.ndim == 1 or (ds.ndim == 2 and ds.shape[1] == 1)):
            raise OfflineDataError(f"{path}: dataset '{name}' has shape {ds.shape}, expected [rows]")
    return found


def _int_attr(path: str, key: str, value: Any) -> int:
    lo, hi = ATTR_RANGES[key]
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise OfflineDataError(f"{path}: attribute '{key}' is {value!r}, expected an integer") from None
    if not lo <= number <= hi:
        raise OfflineDataError(f"{path}: attribute '{key}' is {number}, expected {lo}..{hi}")
    return number


def hdf5_attrs(f) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with hdf5_damage(f.filename):
        for k in ("env_id", *ATTR_RANGES):
            if k in f.attrs:
                v = f.attrs[k]
                v = v.decode() if isinstance(v, bytes) else v
                out[k] = str(v) if k == "env_id" else _int_attr(f.filename, k, v)
    return out


def read_hdf5_column(f, role: str, name: str, start: int, stop: int) -> np.ndarray:
    with hdf5_damage(f.filename, name):
        a = f[name][start:stop]
    if a.ndim == 2 and role not in TWO_D_ROLES:
        a = a[:, 0]
    return a


def read_hdf5_rows(f, keys: dict[str, str], start: int, stop: int) -> RawData:
    arrays = {role: read_hdf5_column(f, role, name, start, stop) for role, name in keys.items()}
    return RawData(**arrays, attrs=hdf5_attrs(f))


def read_hdf5(path: Path) -> RawData:
    with open_hdf5(path) as f:
        keys = hdf5_keys(f, path)
        return read_hdf5_rows(f, keys, 0, f[keys["obs"]].shape[0])
