"""Imitation and behaviour cloning: masked cross-entropy on the data's moves (+ value MSE).

The policy target is the one-hot of the played move, optionally smoothed: a fraction
`label_smoothing` of the mass is spread uniformly over the position's *legal* moves (never
onto illegal ones, which the actor masks anyway). The value head learns the game outcome
from the mover's view wherever the data has one (`batch.value` is NaN where it does not,
and those samples are left out of the value loss).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.objectives.alphazero import masked_log_softmax, policy_metrics
from trainer.objectives.base import Objective, clip_and_norm, set_lr
from trainer.training.batch import Batch


def smoothed_targets(onehot: torch.Tensor, legal: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing <= 0:
        return onehot
    legal_f = legal.float()
    uniform = legal_f / legal_f.sum(-1, keepdim=True).clamp(min=1.0)
    return (1.0 - smoothing) * onehot + smoothing * uniform


def masked_value_loss(value: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE over samples with a known target, how many there were)."""
    known = torch.isfinite(target)
    diff = torch.where(known, value - torch.nan_to_num(target), torch.zeros_like(value))
    count = known.sum()
    return (diff * diff).sum() / count.clamp(min=1), count


class SupervisedObjective(Objective):
    def __init__(
        self,
        net: nn.Module,
        *,
        name: str,
        lr: float,
        optimizer: str = "adamw",
        weight_decay: float = 0.0,
        grad_clip: float = 0.0,
        label_smoothing: float = 0.0,
        value_weight: float = 1.0,
    ):
        self.name = name
        self.net = net
        opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(net.parameters(), lr=lr, weight_decay=weight_decay)
        self.grad_clip = grad_clip
        self.label_smoothing = label_smoothing
        self.value_weight = value_weight

    def losses(self, batch: Batch, smoothing: float) -> dict[str, torch.Tensor]:
        logits, value = self.net(batch.obs)
        logp = masked_log_softmax(logits, batch.legal_mask)
        target = smoothed_targets(batch.policy, batch.legal_mask, smoothing)
        # 0 * log(~0) on illegal moves is 0: masked_log_softmax uses a finite fill value.
        policy_loss = -(target * logp).sum(-1).mean()
        value_loss, known = masked_value_loss(value.squeeze(-1), batch.value)
        total = policy_loss + self.value_weight * value_loss
        return {"total": total, "policy": policy_loss, "value": value_loss, "logp": logp, "known": known}

    def train_step(self, batch: Batch, lr: float) -> dict[str, float]:
        self.net.train()
        set_lr(self.optimizer, lr)
        out = self.losses(batch, self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        grad_norm = clip_and_norm(self.net.parameters(), self.grad_clip)
        self.optimizer.step()
        return {
            "total_loss": out["total"].item(),
            "policy_loss": out["policy"].item(),
            "value_loss": out["value"].item(),
            "grad_norm": grad_norm,
            **policy_metrics(out["logp"].detach(), batch.policy, batch.legal_mask),
        }

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, float]:
        """Unsmoothed cross-entropy: the validation loss measures the data's moves."""
        self.net.eval()
        out = self.losses(batch, 0.0)
        return {
            "total_loss": out["total"].item(),
            "policy_loss": out["policy"].item(),
            "value_loss": out["value"].item(),
            **policy_metrics(out["logp"], batch.policy, batch.legal_mask),
        }

    def export_module(self) -> nn.Module:
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
