"""Batch sources over offline datasets: seeded train/validation split, epoch or endless order.

The whole training path is tensor indexing: each epoch draws one `randperm` of the
training rows and hands out consecutive slices of it, so there is no Python per sample.
The permutation of epoch e is a pure function of (seed, e), which is why a resumed run
only needs (epoch, step in epoch) to continue with exactly the batches an uninterrupted
run would have seen. Large HDF5 files go through `ChunkStreamSource`, the same idea one
chunk at a time.

Under torchrun every rank draws the same permutation and a global step takes `world_size`
consecutive slices of it, rank r the r-th: the shards are disjoint, every rank has the
same number of steps per epoch, and 2 ranks x B see exactly the rows of 1 process x 2B.
The position is saved in rows of the epoch, so a run resumed with another number of
ranks continues where the last one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from trainer.sources.offline_data import HDF5Chunks, OfflineDataError, OfflineDataset
from trainer.training.batch import Batch


def validation_games(num_episodes: int, val_fraction: float, seed: int) -> np.ndarray:
    """Bool [num_episodes], True = validation. Seeded, by game, never empty on either side
    when there are at least two games."""
    val = np.zeros(num_episodes, dtype=bool)
    if val_fraction <= 0 or num_episodes < 2:
        return val
    n_val = min(num_episodes - 1, max(1, round(num_episodes * val_fraction)))
    perm = np.random.default_rng(seed).permutation(num_episodes)
    val[perm[:n_val]] = True
    return val


def split_rows(data: OfflineDataset, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train row indices, validation row indices) by game, on the data's device."""
    val_games = torch.from_numpy(validation_games(data.num_episodes, val_fraction, seed)).to(
        data.episode.device
    )
    is_val = val_games[data.episode]
    rows = torch.arange(len(data), device=data.episode.device)
    return rows[~is_val], rows[is_val]


def steps_for_world(steps: int, state: dict[str, Any], world_size: int) -> int:
    """`steps` global steps of a run saved with `state["world_size"]` ranks, counted in steps of
    `world_size` ranks (the same per-rank batch): the rows already trained this epoch, rounded
    down, so a resume with fewer or more ranks sees a few rows again rather than skipping any."""
    return steps * int(state.get("world_size", 1)) // world_size


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=g)


class ShuffledSource:
    """Batches of `batch_size` rows of `indices`, reshuffled every epoch.

    `epochs` = 0 runs forever (step-based modes). The last incomplete batch of an epoch is
    dropped (its rows are in other batches in other epochs), so every epoch has the same
    number of steps and `steps_per_epoch * epochs` is the run's length.
    """

    def __init__(
        self,
        data: OfflineDataset,
        indices: torch.Tensor,
        batch_size: int,
        seed: int,
        epochs: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(indices) < max(1, world_size):  # every rank needs a row of every step
            raise OfflineDataError(
                f"{data.path}: {len(indices) or 'no'} training rows left after the validation split"
                + (f", fewer than the {world_size} ranks" if len(indices) else "")
            )
        self.data, self.indices = data, indices
        self.rank, self.world_size = rank, world_size
        self.batch_size = min(batch_size, len(indices) // world_size)
        self.seed, self.epochs = seed, epochs
        self.steps_per_epoch = max(1, len(indices) // (self.batch_size * world_size))
        self.epoch = 0
        self.step_in_epoch = 0
        self._perm: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return len(self.indices)

    @property
    def epochs_completed(self) -> int:
        return self.epoch

    def next_batch(self) -> Batch | None:
        if self.exhausted:
            return None
        if self._perm is None:
            self._perm = self.indices[
                epoch_permutation(self.rows, self.seed, self.epoch).to(self.indices.device)
            ]
        k = (self.step_in_epoch * self.world_size + self.rank) * self.batch_size
        batch = self.data.batch(self._perm[k : k + self.batch_size])
        self.step_in_epoch += 1
        if self.step_in_epoch >= self.steps_per_epoch:
            # The epoch counts as complete once its last batch is handed out, so hooks see
            # it right after that step (validation, early stopping) and the loop ends there.
            self.epoch, self.step_in_epoch, self._perm = self.epoch + 1, 0, None
        return batch

    def not_trained(self, batch: Batch) -> None: ...  # an epoch is a pass over the data, not a budget

    @property
    def waiting_reason(self) -> None:
        return None

    @property
    def exhausted(self) -> bool:
        return bool(self.epochs) and self.epoch >= self.epochs

    def stats(self) -> dict[str, Any]:
        return {
            "replay_buffer_size": self.rows,
            "rows_seen": len(self.data),
            "epoch": self.epoch + self.step_in_epoch / self.steps_per_epoch,
            "epochs": self.epochs,
            "world_size": self.world_size,
            "global_batch_size": self.batch_size * self.world_size,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "rows": self.rows,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rows") != self.rows or state.get("batch_size") != self.batch_size:
            raise OfflineDataError(
                f"{self.data.path}: the checkpoint was trained on {state.get('rows')} rows in batches of "
                f"{state.get('batch_size')}, this run has {self.rows} rows in batches of {self.batch_size}; "
                "resume with the same --data, --seed and --batch-size, or use --fresh"
            )
        self.epoch, self._perm = int(state["epoch"]), None
        self.step_in_epoch = steps_for_world(int(state["step_in_epoch"]), state, self.world_size)

    def close(self) -> None: ...


class EvalBatches:
    """Validation rows in fixed order, in batches (iterable any number of times)."""

    def __init__(self, data: OfflineDataset, indices: torch.Tensor, batch_size: int):
        self.data, self.indices, self.batch_size = data, indices, batch_size

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Batch]:
        for k in range(0, len(self.indices), self.batch_size):
            yield self.data.batch(self.indices[k : k + self.batch_size])


# --- chunked HDF5 -------------------------------------------------------------------------------


def split_chunks(num_chunks: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    val = validation_games(num_chunks, val_fraction, seed)
    return [i for i in range(num_chunks) if not val[i]], [i for i in range(num_chunks) if val[i]]


class ChunkStreamSource:
    """Like `ShuffledSource`, for a file too large for memory: each epoch visits the
    training chunks in a seeded order and each chunk's usable rows in a seeded order.
    Only one chunk is in memory at a time."""

    def __init__(
        self,
        chunks: HDF5Chunks,
        chunk_ids: list[int],
        batch_size: int,
        seed: int,
        epochs: int,
        device: torch.device,
        transitions: bool,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not chunk_ids:
            raise OfflineDataError(f"{chunks.path}: no training chunks left after the validation split")
        self.chunks, self.chunk_ids = chunks, chunk_ids
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.seed, self.epochs = batch_size, seed, epochs
        self.device, self.transitions = device, transitions
        self.epoch, self.chunk_pos, self.step_in_chunk = 0, 0, 0
        self._current: tuple[int, OfflineDataset, torch.Tensor] | None = None
        rows = [min(chunks.chunk_rows, chunks.rows - i * chunks.chunk_rows) for i in chunk_ids]
        self.rows = sum(rows)
        # Exact for supervised modes; for TD modes rows without a successor are skipped, so
        # this is an upper bound (they are step-based anyway).
        self.steps_per_epoch = sum(self._shard(r)[1] for r in rows)

    @property
    def epochs_completed(self) -> int:
        return self.epoch

    def _chunk(self) -> tuple[OfflineDataset, torch.Tensor]:
        order = [self.chunk_ids[i] for i in epoch_permutation(len(self.chunk_ids), self.seed, self.epoch)]
        cid = order[self.chunk_pos]
        if self._current is None or self._current[0] != cid:
            data = self.chunks.load(cid).to(self.device)
            rows = torch.arange(len(data), device=self.device)
            if self.transitions:
                rows = rows[data.has_next]
            perm = rows[
                epoch_permutation(len(rows), self.seed + 7919 * (cid + 1), self.epoch).to(self.device)
            ]
            self._current = (cid, data, perm)
        return self._current[1], self._current[2]

    def _shard(self, rows: int) -> tuple[int, int]:
        """(rows per rank and step, steps) for a chunk of `rows` usable rows: a chunk smaller
        than a global batch is still shared out whole, in smaller batches."""
        size = min(self.batch_size, rows // self.world_size)
        return (size, rows // (size * self.world_size)) if rows >= 2 and size >= 1 else (0, 0)

    def next_batch(self) -> Batch | None:
        while not self.exhausted:
            data, perm = self._chunk()
            size, steps = self._shard(len(perm))
            if self.step_in_chunk < steps:
                k = (self.step_in_chunk * self.world_size + self.rank) * size
                self.step_in_chunk += 1
                batch = data.batch(perm[k : k + size])
                if self.step_in_chunk >= steps:
                    self._advance()
                return batch
            self._advance()
        return None

    def not_trained(self, batch: Batch) -> None: ...  # an epoch is a pass over the data, not a budget

    def _advance(self) -> None:
        self.step_in_chunk = 0
        self.chunk_pos += 1
        if self.chunk_pos >= len(self.chunk_ids):
            self.chunk_pos, self.epoch = 0, self.epoch + 1

    @property
    def waiting_reason(self) -> None:
        return None

    @property
    def exhausted(self) -> bool:
        return bool(self.epochs) and self.epoch >= self.epochs

    def stats(self) -> dict[str, Any]:
        return {
            "replay_buffer_size": self.rows,
            "rows_seen": self.chunks.rows,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "streaming_chunks": len(self.chunk_ids),
            "world_size": self.world_size,
            "global_batch_size": self.batch_size * self.world_size,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "chunk_pos": self.chunk_pos,
            "step_in_chunk": self.step_in_chunk,
            "rows": self.rows,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rows") != self.rows or state.get("batch_size") != self.batch_size:
            raise OfflineDataError(
                f"{self.chunks.path}: the checkpoint was trained on {state.get('rows')} rows in batches of "
                f"{state.get('batch_size')}, this run has {self.rows}/{self.batch_size}; use the same data or --fresh"
            )
        self.epoch, self.chunk_pos = int(state["epoch"]), int(state["chunk_pos"])
        self.step_in_chunk = steps_for_world(int(state["step_in_chunk"]), state, self.world_size)
        self._current = None

    def close(self) -> None:
        self.chunks.close()


class ChunkEvalBatches:
    """Validation chunks of a streamed file, at most `max_rows` rows per pass."""

    def __init__(
        self,
        chunks: HDF5Chunks,
        chunk_ids: list[int],
        batch_size: int,
        device: torch.device,
        transitions: bool,
        max_rows: int = 200_000,
    ):
        self.chunks, self.chunk_ids, self.batch_size = chunks, chunk_ids, batch_size
        self.device, self.transitions, self.max_rows = device, transitions, max_rows

    def __len__(self) -> int:
        return min(
            self.max_rows,
            sum(
                min(self.chunks.chunk_rows, self.chunks.rows - i * self.chunks.chunk_rows)
                for i in self.chunk_ids
            ),
        )

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        for cid in self.chunk_ids:
            data = self.chunks.load(cid).to(self.device)
            rows = torch.arange(len(data), device=self.device)
            if self.transitions:
                rows = rows[data.has_next]
            for k in range(0, len(rows), self.batch_size):
                if seen >= self.max_rows:
                    return
                idx = rows[k : k + self.batch_size]
                seen += len(idx)
                yield data.batch(idx)
