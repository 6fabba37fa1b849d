"""What IQL and CQL share: twin Q networks with Polyak targets beside the exported net.

A twin-Q objective owns two networks with separate optimisers: `net` (the exported
policy-value network, `build_network`) and `q` (two Q networks whose policy-head outputs
are Q(s, .)), plus `q_target`, a frozen Polyak average of `q`. Subclasses define
`losses(batch)` (returning at least `net_loss` and `q_loss`) and `_metrics(out, batch)`;
the update itself (one backward over disjoint parameters, clip, step, Polyak) is here.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainer.objectives.base import Objective, StepGuard, clip_and_norm, set_lr
from trainer.objectives.policy_value import ILLEGAL_LOGIT
from trainer.training.batch import Batch


class TwinQ(nn.Module):
    """Two independent Q networks; each is a policy-value net whose logits are Q(s, .)."""

    def __init__(self, make_net: Callable[[], nn.Module]):
        super().__init__()
        self.q1, self.q2 = make_net(), make_net()

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(obs)[0], self.q2(obs)[0]


def frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target.eval()


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, rate: float) -> None:
    t_params, o_params = list(target.parameters()), list(online.parameters())
    torch._foreach_lerp_(t_params, o_params, rate)
    for t_buf, o_buf in zip(target.buffers(), online.buffers()):
        t_buf.copy_(o_buf)  # BatchNorm statistics follow the online net


def masked_max(q: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    """max over legal actions; 0 where no action is legal (terminal states)."""
    best = q.masked_fill(~legal, ILLEGAL_LOGIT).max(-1).values
    return torch.where(legal.any(-1), best, torch.zeros_like(best))


def opponent_sign(player_count: int) -> float:
    return -1.0 if player_count == 2 else 1.0


def gather(q: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    return q.gather(1, action.unsqueeze(1)).squeeze(1)


class TwinQObjective(Objective):
    def __init__(
        self,
        net: nn.Module,
        make_net: Callable[[], nn.Module],
        *,
        lr: float,
        weight_decay: float,
        grad_clip: float,
        gamma: float,
        target_update_rate: float,
        value_weight: float = 1.0,
        player_count: int = 2,
    ):
        self.net = net
        device = next(net.parameters()).device
        self.q = TwinQ(make_net).to(device)
        self.q_target = frozen_copy(self.q)
        self.opt_net = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        self.opt_q = torch.optim.AdamW(self.q.parameters(), lr=lr, weight_decay=weight_decay)
        self.grad_clip, self.gamma, self.rate, self.value_weight = (
            grad_clip,
            gamma,
            target_update_rate,
            value_weight,
        )
        self.sign = opponent_sign(player_count)
        self.guard = StepGuard(self.net, self.q)

    @abstractmethod
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """At least `net_loss` and `q_loss`, plus whatever `_metrics` reports."""

    @abstractmethod
    def _metrics(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, float]: ...

    def train_step(self, batch: Batch, lr: float) -> dict[str, float]:
        self.net.train()
        self.q.train()
        set_lr(self.opt_net, lr)
        set_lr(self.opt_q, lr)
        self.guard.begin()
        out = self.losses(batch)
        self.opt_net.zero_grad(set_to_none=True)
        self.opt_q.zero_grad(set_to_none=True)
        (out["net_loss"] + out["q_loss"]).backward()  # disjoint parameters (q targets detached): one backward
        grad_norm = clip_and_norm(self.net.parameters(), self.grad_clip)
        q_grad_norm = clip_and_norm(self.q.parameters(), self.grad_clip)
        metrics = {**self._metrics(out, batch), "grad_norm": grad_norm, "q_grad_norm": q_grad_norm}
        self.guard.check(metrics, "total_loss", "grad_norm", "q_grad_norm")
        self.opt_net.step()
        self.opt_q.step()
        polyak_update(self.q_target, self.q, self.rate)
        return metrics

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, float]:
        self.net.eval()
        self.q.eval()
        return self._metrics(self.losses(batch), batch)

    def export_module(self) -> nn.Module:
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "q": self.q.state_dict(),
            "q_target": self.q_target.state_dict(),
            "opt_net": self.opt_net.state_dict(),
            "opt_q": self.opt_q.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.opt_net.load_state_dict(state["opt_net"])
        self.opt_q.load_state_dict(state["opt_q"])
