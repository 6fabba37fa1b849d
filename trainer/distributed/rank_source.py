"""A rank's view of its replay source, so that the run's figures and state are global.

Every rank reads the replay itself and samples its own batches; they step together, so
each hands out the same number of samples. The reuse budget (samples <= max_reuse *
rows_seen) is for the whole run: each rank's source is given max_reuse / world_size,
and the checkpoint stores the global sample count, so a run resumed with another number
of ranks keeps the same budget. Only rank 0's sampler state is saved; another rank keeps
the cursor and counters (the same DB, so the same rows) and derives its RNG stream from
the seed, its rank and the step (`ranks.derived_rng_state`).

On a GPU the batches are built on the CPU by the source's worker and copied here, from
pinned memory and without blocking, so the copy overlaps the previous step's kernels.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch

from trainer.distributed.process_group import DistContext
from trainer.distributed.ranks import derived_rng_state
from trainer.sources import BatchSource
from trainer.sources.wait_reason import WaitReason
from trainer.training.batch import Batch

# Source state keys of the replay sampler's RNG position (sources/replay_source.py).
_RNG_KEYS = ("rng", "rng_burst", "rng_skip")


class RankSource:
    """`BatchSource` wrapping one rank's source (see the module docstring)."""

    def __init__(
        self,
        inner: BatchSource,
        ctx: DistContext,
        batch_size: int,
        seed: int | None,
        device: torch.device | str = "cpu",
    ):
        self.inner, self.ctx = inner, ctx
        self.batch_size, self.seed = batch_size, seed
        self.device = torch.device(device)

    # --- BatchSource: the rank's own -----------------------------------------------------
    def next_batch(self) -> Batch | None:
        batch = self.inner.next_batch()
        return None if batch is None else to_device(batch, self.device)

    def not_trained(self, batch: Batch) -> None:
        self.inner.not_trained(batch)

    @property
    def waiting_reason(self) -> WaitReason | None:
        return self.inner.waiting_reason

    @property
    def exhausted(self) -> bool:
        return self.inner.exhausted

    @property
    def epochs_completed(self) -> int:
        return self.inner.epochs_completed

    def close(self) -> None:
        self.inner.close()

    # --- BatchSource: the run's ----------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        out = dict(self.inner.stats())
        world = self.ctx.world_size
        for key in ("replay_samples", "reuse_ratio"):
            if isinstance(out.get(key), (int, float)):
                out[key] = out[key] * world
        out["world_size"] = world
        out["global_batch_size"] = self.batch_size * world
        return out

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.inner.state_dict())
        if "samples" in state:
            state["samples"] = int(state["samples"]) * self.ctx.world_size
        return state

    def load_state_dict(self, state: dict[str, Any], step: int = 0) -> None:
        """Resume from the run's saved state (rank 0's sampler) at global step `step`."""
        state = dict(state)
        if "samples" in state:
            state["samples"] = int(state["samples"]) // self.ctx.world_size
        if not self.ctx.is_main and "rng" in state:
            state.update(rng=derived_rng_state(self.seed, self.ctx.rank, step), rng_burst=0, rng_skip=0)
        self.inner.load_state_dict(state)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """`batch` on `device`: through pinned memory, without blocking, for CUDA."""
    if device.type == "cpu" or batch.obs.device == device:
        return batch
    if device.type == "cuda":
        batch = Batch(
            **{
                f.name: v.pin_memory() if isinstance(v := getattr(batch, f.name), torch.Tensor) else v
                for f in fields(batch)
            }
        )
    return batch.to(device)  # non_blocking
