"""Discrete Implicit Q-Learning (Kostrikov et al. 2021) for two-player zero-sum games.

Networks:
  net        the exported policy-value network (`build_network`): its policy head is the
             extracted policy, its tanh value head IS V(s) of IQL, trained with the
             expectile loss. So the published value is IQL's V, from the side to move's view.
  q1, q2     twin Q networks (same architecture; their policy-head outputs are Q(s, .)),
  q1', q2'   and their Polyak-averaged targets.

One update (sample, forward, losses, backward, clip, step, Polyak):
  Q'(s,a)  = min(q1'(s,a), q2'(s,a))
  V loss   = E[ |tau - 1(Q' - V < 0)| * (Q' - V)^2 ]                 expectile regression
  Q target = r + gamma * (1 - done) * (-V(s'))                         <- zero-sum sign
  Q loss   = (q1(s,a) - y)^2 + (q2(s,a) - y)^2
  policy   = -E[ min(exp(beta * (Q' - V)), max_weight) * log pi(a|s) ]   (legal-masked)

Why -V(s'): rewards are from the mover's view, and after a move the *opponent* is to move
in s', so V(s') is the opponent's value and ours is its negation (both players maximise
their own outcome). With one player (`player_count == 1`) the sign is +1. A terminal ply
(done) has no bootstrap: its target is the reward, +1 for a winning move, 0 for a draw.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.objectives.alphazero import ILLEGAL_LOGIT, masked_log_softmax, policy_metrics
from trainer.objectives.base import Objective, clip_and_norm, set_lr
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


class IQLObjective(Objective):
    name = "iql"

    def __init__(
        self,
        net: nn.Module,
        make_net: Callable[[], nn.Module],
        *,
        lr: float,
        weight_decay: float,
        grad_clip: float,
        gamma: float,
        expectile: float,
        beta: float,
        max_weight: float,
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
        self.grad_clip, self.gamma, self.expectile = grad_clip, gamma, expectile
        self.beta, self.max_weight, self.rate = beta, max_weight, target_update_rate
        self.value_weight = value_weight
        self.sign = opponent_sign(player_count)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        a = batch.action
        with torch.no_grad():
            tq1, tq2 = self.q_target(batch.obs)
            q_data = torch.min(gather(tq1, a), gather(tq2, a))
            was_training = self.net.training
            self.net.eval()
            v_next = self.net(batch.next_obs)[1].squeeze(-1)
            self.net.train(was_training)
            y = batch.reward + self.gamma * (1.0 - batch.done) * self.sign * v_next

        logits, v = self.net(batch.obs)
        v = v.squeeze(-1)
        diff = q_data - v
        weight = torch.abs(self.expectile - (diff < 0).float())
        v_loss = (weight * diff * diff).mean()

        adv = (q_data - v).detach()
        w = torch.exp(self.beta * adv).clamp(max=self.max_weight)
        logp = masked_log_softmax(logits, batch.legal_mask)
        pi_loss = -(w * gather(logp, a)).mean()

        q1, q2 = self.q(batch.obs)
        q1a, q2a = gather(q1, a), gather(q2, a)
        q_loss = F.mse_loss(q1a, y) + F.mse_loss(q2a, y)
        return {
            "net_loss": pi_loss + self.value_weight * v_loss, "q_loss": q_loss, "pi_loss": pi_loss,
            "v_loss": v_loss, "logp": logp, "q1a": q1a, "y": y, "v": v, "adv": adv, "w": w,
        }

    def _metrics(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, float]:
        adv, w = out["adv"], out["w"]
        return {
            "total_loss": (out["net_loss"] + out["q_loss"]).item(),
            "policy_loss": out["pi_loss"].item(),
            "value_loss": out["v_loss"].item(),
            "q_loss": out["q_loss"].item(),
            "q_mean": out["q1a"].mean().item(),
            "q_target_mean": out["y"].mean().item(),
            "v_mean": out["v"].mean().item(),
            "advantage_mean": adv.mean().item(),
            "advantage_std": adv.std().item() if adv.numel() > 1 else 0.0,
            "advantage_weight_mean": w.mean().item(),
            "advantage_weight_clipped": (w >= self.max_weight).float().mean().item(),
            **policy_metrics(out["logp"].detach(), batch.policy, batch.legal_mask),
        }

    def train_step(self, batch: Batch, lr: float) -> dict[str, float]:
        self.net.train()
        self.q.train()
        set_lr(self.opt_net, lr)
        set_lr(self.opt_q, lr)
        out = self.losses(batch)
        self.opt_net.zero_grad(set_to_none=True)
        self.opt_q.zero_grad(set_to_none=True)
        (out["net_loss"] + out["q_loss"]).backward()  # disjoint parameters: one backward
        grad_norm = clip_and_norm(self.net.parameters(), self.grad_clip)
        q_grad_norm = clip_and_norm(self.q.parameters(), self.grad_clip)
        self.opt_net.step()
        self.opt_q.step()
        polyak_update(self.q_target, self.q, self.rate)
        return {**self._metrics(out, batch), "grad_norm": grad_norm, "q_grad_norm": q_grad_norm}

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
