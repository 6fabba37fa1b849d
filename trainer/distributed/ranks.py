"""Small helpers for the per-rank parts of a run: seeds, and sharing rank 0's start."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch.distributed as dist

from trainer.config.network import MAX_SEED
from trainer.distributed.agreement import guarded
from trainer.distributed.process_group import DistContext

T = TypeVar("T")


def rank_seed(seed: int | None, rank: int) -> int | None:
    """Rank r's seed: seed + r, so each rank samples its own batches yet a run is repeatable.
    Unset stays unset (every rank draws its own from the OS)."""
    return None if seed is None else (seed + rank) % (MAX_SEED + 1)


def derived_rng_state(seed: int | None, rank: int, step: int) -> dict[str, Any]:
    """A numpy bit-generator state for rank `rank` resuming at `step`.

    Only rank 0's sampler state is in a checkpoint; the others derive theirs from the seed,
    the rank and the step, so a resume is repeatable without a file per rank, and a
    resume never replays the stream the rank drew from the start.
    """
    if seed is None:  # an unseeded run is not repeatable anyway: fresh entropy
        return np.random.default_rng().bit_generator.state
    return np.random.default_rng(np.random.SeedSequence([seed, rank, step])).bit_generator.state


def share_from_main(value: T, ctx: DistContext) -> T:
    """Rank 0's `value` on every rank (pickled; for start-up state, not per-step data)."""
    if not ctx.distributed:
        return value
    box = [value if ctx.is_main else None]
    guarded(dist.broadcast_object_list, box, src=0)
    return box[0]
