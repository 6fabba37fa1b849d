"""Opening a data file: which format, is it there, read it whole or stream it."""

from __future__ import annotations

import os
from pathlib import Path

from trainer.games import GameSpec
from trainer.sources.offline_data.dataset import OfflineDataError, OfflineDataset
from trainer.sources.offline_data.hdf5 import read_hdf5
from trainer.sources.offline_data.jsonl import read_jsonl
from trainer.sources.offline_data.validate import build_dataset

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


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
    return build_dataset(
        raw,
        str(path),
        transitions=transitions,
        env_id=env_id,
        num_actions=num_actions,
        spec=spec,
        player_count=player_count,
    )


def should_stream(path: Path, threshold_mb: float) -> bool:
    return data_format(path) == "hdf5" and os.path.getsize(path) > threshold_mb * 2**20
