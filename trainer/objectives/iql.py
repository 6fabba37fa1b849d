"""Discrete Implicit Q-Learning (Kostrikov et al. 2021) for two-player zero-sum games.

Networks:
  net        the exported policy-value network (`build_network`): its policy head is the
             extracted policy, its tanh value head IS V(s) of IQL, trained with the
             expectile loss. So the published value is IQL's V, from the side to move's view.
  q1, q2     twin Q networks (same architecture; their policy-head outputs are Q(s, .));
             with `--critics 1`, q1 alone (the min below is then q1' itself),
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

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.objectives.policy_value import masked_log_softmax, policy_metrics
from trainer.objectives.step_metrics import Values
from trainer.objectives.twin_q import TwinQObjective, gather, q_min, summed
from trainer.training.batch import Batch


class IQLObjective(TwinQObjective):
    name = "iql"

    def __init__(
        self,
        net: nn.Module,
        make_net: Callable[[], nn.Module],
        *,
        expectile: float,
        beta: float,
        max_weight: float,
        **common,  # lr, weight_decay, grad_clip, gamma, target_update_rate, ... (TwinQObjective)
    ):
        super().__init__(net, make_net, **common)
        self.expectile, self.beta, self.max_weight = expectile, beta, max_weight

    def losses(self, batch: Batch, nets: nn.Module | None = None) -> dict[str, torch.Tensor]:
        a = batch.action
        with torch.no_grad():
            q_data = gather(q_min(self.q_target(batch.obs)), a)
            v_next = self.eval_forward(self.net, batch.next_obs)[1].squeeze(-1)
            y = batch.reward + self.gamma * (1.0 - batch.done) * self.sign * v_next

        (logits, v), qs = (nets or self.nets)(batch.obs)
        v = v.squeeze(-1)
        diff = q_data - v
        weight = torch.abs(self.expectile - (diff < 0).float())
        v_loss = (weight * diff * diff).mean()

        adv = diff.detach()
        w = torch.exp(self.beta * adv).clamp(max=self.max_weight)
        logp = masked_log_softmax(logits, batch.legal_mask)
        pi_loss = -(w * gather(logp, a)).mean()

        qas = [gather(q, a) for q in qs]
        q_loss = summed([F.mse_loss(qa, y) for qa in qas])
        return {
            "net_loss": pi_loss + self.value_weight * v_loss,
            "q_loss": q_loss,
            "pi_loss": pi_loss,
            "v_loss": v_loss,
            "logp": logp,
            "q1a": qas[0],
            "y": y,
            "v": v,
            "adv": adv,
            "w": w,
        }

    def _metrics(self, out: dict[str, torch.Tensor], batch: Batch) -> Values:
        adv, w = out["adv"], out["w"]
        return {
            "total_loss": out["net_loss"] + out["q_loss"],
            "policy_loss": out["pi_loss"],
            "value_loss": out["v_loss"],
            "q_loss": out["q_loss"],
            "q_mean": out["q1a"].mean(),
            "q_target_mean": out["y"].mean(),
            "v_mean": out["v"].mean(),
            "advantage_mean": adv.mean(),
            "advantage_std": adv.std() if adv.numel() > 1 else 0.0,
            "advantage_weight_mean": w.mean(),
            "advantage_weight_clipped": (w >= self.max_weight).float().mean(),
            **policy_metrics(out["logp"].detach(), batch.policy, batch.legal_mask),
        }
