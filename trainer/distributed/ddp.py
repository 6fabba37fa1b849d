"""The training forward pass as data-parallel training runs it.

Only the forward and backward passes go through the wrapper: the objective keeps its plain
net for weights, checkpoints, ONNX export and evaluation, so a checkpoint has the same keys
with or without DDP and a 2-rank run resumes in one process and back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.distributed.process_group import DistContext

if TYPE_CHECKING:
    from trainer.objectives.base import Objective

log = logging.getLogger("trainer")

Amp = Literal["off", "bf16"]


class AutocastForward(nn.Module):
    """Runs `net` under bf16 autocast and hands back float32 outputs, so the losses (log-softmax
    over masked logits, the value MSE) are computed in full precision."""

    def __init__(self, net: nn.Module, device_type: str):
        super().__init__()
        self.net, self.device_type = net, device_type

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.net(*args, **kwargs)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def training_forward(
    net: nn.Module, ctx: DistContext, device: torch.device, amp: Amp = "off", unused_parameters: bool = False
) -> nn.Module:
    """`net` as the training step should call it: under autocast with --amp bf16, and in
    DistributedDataParallel (gradients averaged over ranks) under torchrun.

    DDP broadcasts rank 0's parameters and buffers when it is built, so every rank starts
    from the same weights, and rank 0's BatchNorm statistics again on each forward pass.
    `unused_parameters`: some of `net`'s parameters get no gradient (a head the loss never
    uses); DDP then looks for them each step instead of waiting for them for ever.
    """
    module = AutocastForward(net, device.type) if amp == "bf16" else net
    if not ctx.distributed:
        return module
    device_ids = (
        [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    )
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=unused_parameters)


def prepare_for_ranks(
    objective: Objective, ctx: DistContext, device: torch.device, batch_size: int, amp: Amp = "off"
) -> None:
    """Route the objective's training forward passes through `training_forward` when this
    run needs it (several ranks, or --amp), and say what the global batch is."""
    if ctx.distributed or amp != "off":
        objective.wrap_for_training(
            lambda net: training_forward(net, ctx, device, amp, objective.unused_parameters)
        )
    if ctx.distributed:
        log.info(
            "data-parallel: %d ranks x batch %d = global batch %d",
            ctx.world_size,
            batch_size,
            ctx.world_size * batch_size,
        )
