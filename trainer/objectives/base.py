"""The interface between the shared loop and one learning algorithm."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from trainer.training.batch import Batch


class Objective(ABC):
    """Owns its networks and optimisers; the loop only calls these methods.

    `train_step` receives the LR to use (a pure function of the global step, computed by
    the loop) and must set it on every optimiser param group before stepping, so a resumed
    run uses exactly the LR an uninterrupted one would.
    """

    name: str = "objective"

    @abstractmethod
    def train_step(self, batch: Batch, lr: float) -> dict[str, float]:
        """One optimisation step. Must return at least total_loss, policy_loss, value_loss
        and grad_norm (pre-clip global norm) as Python floats."""

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, float]:
        """Losses/accuracy on a held-out batch without updating anything."""
        raise NotImplementedError

    @abstractmethod
    def export_module(self) -> nn.Module:
        """An nn.Module mapping observation [B, obs] -> (policy_logits [B, A], value [B, 1])
        in the ONNX contract's meaning; this is what gets published."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Weights and optimiser states; tensors and plain types only (weights_only load)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def load_policy_weights(self, net_state: dict[str, Any]) -> None:
        """Initialise from another run's policy/value network (--init-from)."""
        self.export_module().load_state_dict(net_state)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_and_norm(params, max_norm: float) -> float:
    """Global-norm clip; returns the pre-clip norm (recorded in stats)."""
    params = [p for p in params if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params])) if params else 0.0
