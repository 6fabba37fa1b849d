"""The process group, set up from the environment torchrun gives each worker.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
run is one process and nothing here creates a group. The timeout bounds every collective:
a rank that dies (kill -9, OOM) makes the others fail within it instead of hanging.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import logging
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

log = logging.getLogger("trainer")

Backend = Literal["auto", "gloo", "nccl"]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class PeerLost(RuntimeError):
    """Another rank stopped answering (died, or hung past --dist-timeout)."""


class DistSetupError(RuntimeError):
    """The process group cannot be formed with these settings (a usage error: exit 2)."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str = ""  # "" when there is no process group

    @classmethod
    def single(cls) -> DistContext:
        return cls(rank=0, world_size=1, local_rank=0)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, models, stats and logs progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """The device this rank trains on: with several GPUs per host, the local rank's."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.distributed else device


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(k in env for k in TORCHRUN_VARS)


def backend_for(device: str, override: Backend) -> str:
    if override != "auto":
        return override
    return "nccl" if device.startswith("cuda") else "gloo"


def init_from_env(device: str, backend: Backend = "auto", timeout_s: float = 120.0) -> DistContext:
    """Join torchrun's process group, or `DistContext.single()` when not under torchrun.

    A world of one (torchrun --nproc-per-node 1) is also run without a group: there is
    nobody to average with, and the single-process path stays the only one there.
    """
    if not launched_by_torchrun():
        return DistContext.single()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if world <= 1:
        return DistContext.single()
    chosen = backend_for(device, backend)
    if chosen == "nccl" and not torch.cuda.is_available():
        raise DistSetupError("--dist-backend nccl needs CUDA; use --dist-backend gloo or --device cuda")
    if chosen == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            chosen,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    except (RuntimeError, ValueError) as exc:
        raise DistSetupError(
            f"cannot join the process group ({chosen}, rank {rank} of {world}): {exc}"
        ) from None
    atexit.register(shutdown)
    log.info("rank %d of %d joined the %s process group", rank, world, chosen)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=chosen)


def env_rank() -> int:
    """This process's rank as torchrun set it, before (or without) joining the group."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def rank_log_level(level: str, rank: int) -> str:
    """Progress is rank 0's to log; the other ranks still say what goes wrong (WARNING and up)."""
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    return level if rank == 0 else max(level, "WARNING", key=levels.index)


def shutdown() -> None:
    """Leave the group; after a lost peer there is nobody to say goodbye to, so errors pass.

    Also run at exit, before the interpreter starts finalizing: DDP wrappers sit in
    reference cycles (their autograd hooks) and keep the group and its last work objects
    alive. Left to the final collection, they are torn down while the interpreter refuses
    threads the GIL, and a gloo worker thread that asks for it then aborts the process
    (SIGABRT after a run that succeeded). Collecting them first frees them in order."""
    gc.collect()
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):
            pass
