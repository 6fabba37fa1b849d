"""Every rank stops, waits or trains at the same step: one small all-reduce of flags.

Each rank brings what it knows alone (a signal it received, --steps reached, its source
has no batch, its wait ran past --max-wait); the MAX over ranks is what every rank acts
on. A rank that trained while another stopped would block for ever in the next gradient
all-reduce, so no rank may decide any of these by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.distributed.process_group import DistContext, PeerLost


@dataclass(frozen=True)
class StepFlags:
    stop: bool = False  # this rank is done: a signal, --steps reached, an exhausted source
    no_batch: bool = False  # this rank has no batch this round
    wait_expired: bool = False  # this rank has waited for data past --max-wait


class Agreement:
    """`agree(flags)`: the flags of any rank; the identity in a single process."""

    def __init__(self, ctx: DistContext, device: str | torch.device = "cpu"):
        self.ctx = ctx
        # NCCL reduces device tensors only; gloo wants them on the CPU.
        self.device = torch.device(device) if ctx.backend == "nccl" else torch.device("cpu")

    def __call__(self, flags: StepFlags) -> StepFlags:
        if not self.ctx.distributed:
            return flags
        t = torch.tensor(
            [flags.stop, flags.no_batch, flags.wait_expired], dtype=torch.int32, device=self.device
        )
        guarded(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        stop, no_batch, expired = (bool(v) for v in t.tolist())
        return StepFlags(stop=stop, no_batch=no_batch, wait_expired=expired)

    def collective(self, step, *args, **kwargs):
        """Run `step` (a training step: its backward all-reduces the gradients), turning a
        lost peer into `PeerLost`; a plain call in a single process."""
        return guarded(step, *args, **kwargs) if self.ctx.distributed else step(*args, **kwargs)


def guarded(collective, *args, **kwargs):
    """Run a collective; a peer that died or hung past the timeout becomes `PeerLost`."""
    try:
        return collective(*args, **kwargs)
    except RuntimeError as exc:  # gloo/NCCL errors (DistBackendError is one) and timeouts
        detail = " ".join(str(exc).split())[:300]
        raise PeerLost(
            f"another rank stopped answering ({detail}); this rank exits, the files on disk are those of "
            "the last checkpoint and publish"
        ) from None
