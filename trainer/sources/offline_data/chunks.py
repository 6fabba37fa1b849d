"""Large HDF5 files, read a chunk of rows at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.games import GameSpec
from trainer.sources.offline_data.dataset import OfflineDataError, OfflineDataset
from trainer.sources.offline_data.hdf5 import (
    hdf5_keys,
    open_hdf5,
    read_hdf5_column,
    read_hdf5_rows,
)
from trainer.sources.offline_data.load import check_file
from trainer.sources.offline_data.spec import largest_action
from trainer.sources.offline_data.validate import build_dataset


class HDF5Chunks:
    """A large HDF5 file read `chunk_rows` consecutive rows at a time.

    Each chunk is validated and tensorised like a whole file. One look-ahead row is read
    past the chunk's end so the chunk's last ply still gets its next state; outcomes are
    backfilled only for games that end inside the chunk (store `outcomes` to avoid that).
    """

    def __init__(
        self,
        path: Path,
        chunk_rows: int,
        *,
        transitions: bool,
        env_id: str | None = None,
        num_actions: int | None = None,
        player_count: int | None = None,
    ):
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
        return build_dataset(
            raw, str(self.path), transitions=self.transitions, row_offset=start, keep_rows=stop - start, **how
        )

    def _check_every_chunk(
        self, env_id: str | None, num_actions: int | None, player_count: int | None
    ) -> GameSpec:
        """One pass over the file, a chunk in memory at a time, before training: training
        only meets a chunk when its turn comes, possibly after models were published. The
        spec comes from the first chunk, with any action count inferred from max(action)
        over the whole file, or later chunks could hold actions beyond it."""
        spec = self._build(
            0,
            env_id=env_id,
            num_actions=num_actions,
            max_action=self._max_action(),
            player_count=player_count,
        ).spec
        for i in range(1, self.num_chunks):
            self._build(i, spec=spec)
        return spec

    def _max_action(self) -> int:
        """Over the actions column only; anything that is not an integer is left to the row
        checks in build_dataset, which name the row."""
        name = self.keys["actions"]
        return max(
            largest_action(read_hdf5_column(self.file, "actions", name, start, start + self.chunk_rows))
            for start in range(0, self.rows, self.chunk_rows)
        )

    def __iter__(self) -> Iterator[OfflineDataset]:
        for i in range(self.num_chunks):
            yield self.load(i)

    def close(self) -> None:
        self.file.close()
