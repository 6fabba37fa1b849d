"""Discrete Conservative Q-Learning (Kumar et al. 2020, CQL(H)) for two-player zero-sum games.

Networks: twin Q networks q1, q2 with Polyak targets (TwinQ, shared with IQL), and the
exported policy-value network `net` (`build_network`), distilled from the critic:
  policy head  <- cross-entropy to softmax(min(q1, q2)(s, .) / T) over legal moves
  value head   <- MSE to clamp(max_legal min(q1, q2)(s, .), -1, 1)   (the greedy state value)
so actors get sharp priors and a value in [-1, 1] from the side to move's view, and
`--init-from` a BC checkpoint starts that policy from behaviour cloning.

Critic update, per Q network i:
  a*      = argmax over LEGAL a' of mean(q1, q2)(s', a')      online nets pick (double Q)
  y       = r + gamma * (1 - done) * (-mean(q1', q2')(s', a*))    targets evaluate it
  loss_i  = (q_i(s,a) - y)^2 + alpha * (logsumexp_legal q_i(s, .) - q_i(s, a))

Why the minus: rewards are from the mover's view and in s' the opponent moves, so the
opponent picks a* to maximise ITS Q, and our continuation value is minus that maximum
(negamax). The max and the log-sum-exp only range over legal moves; a terminal s' has
none, and done removes the bootstrap there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.objectives.policy_value import ILLEGAL_LOGIT, masked_log_softmax, policy_metrics
from trainer.objectives.step_metrics import Values
from trainer.objectives.twin_q import TwinQObjective, gather, masked_max
from trainer.training.batch import Batch


class CQLObjective(TwinQObjective):
    name = "cql"

    def __init__(
        self,
        net: nn.Module,
        make_net: Callable[[], nn.Module],
        *,
        alpha: float,
        policy_temperature: float,
        **common,  # lr, weight_decay, grad_clip, gamma, target_update_rate, ... (TwinQObjective)
    ):
        super().__init__(net, make_net, **common)
        self.alpha, self.temperature = alpha, policy_temperature

    def losses(self, batch: Batch, nets: nn.Module | None = None) -> dict[str, torch.Tensor]:
        a, legal, next_legal = batch.action, batch.legal_mask, batch.next_legal_mask
        with torch.no_grad():
            n1, n2 = self.eval_forward(self.q, batch.next_obs)
            best_next = ((n1 + n2) / 2).masked_fill(~next_legal, ILLEGAL_LOGIT).argmax(-1)
            t1, t2 = self.q_target(batch.next_obs)
            opp_value = gather((t1 + t2) / 2, best_next)
            opp_value = torch.where(next_legal.any(-1), opp_value, torch.zeros_like(opp_value))
            y = batch.reward + self.gamma * (1.0 - batch.done) * self.sign * opp_value

        (logits, v), (q1, q2) = (nets or self.nets)(batch.obs)
        q1a, q2a = gather(q1, a), gather(q2, a)
        td_loss = F.mse_loss(q1a, y) + F.mse_loss(q2a, y)
        lse1 = q1.masked_fill(~legal, ILLEGAL_LOGIT).logsumexp(-1)
        lse2 = q2.masked_fill(~legal, ILLEGAL_LOGIT).logsumexp(-1)
        penalty = (lse1 - q1a).mean() + (lse2 - q2a).mean()
        q_loss = td_loss + self.alpha * penalty

        q_min = torch.min(q1, q2).detach()
        target_pi = masked_log_softmax(q_min / self.temperature, legal).exp()
        v_target = masked_max(q_min, legal).clamp(-1.0, 1.0)
        logp = masked_log_softmax(logits, legal)
        pi_loss = -(target_pi * logp).sum(-1).mean()
        v_loss = F.mse_loss(v.squeeze(-1), v_target)
        return {
            "q_loss": q_loss,
            "td_loss": td_loss,
            "penalty": penalty,
            "pi_loss": pi_loss,
            "v_loss": v_loss,
            "net_loss": pi_loss + self.value_weight * v_loss,
            "q1a": q1a,
            "y": y,
            "v_target": v_target,
            "logp": logp,
            "q_min": q_min,
            "legal": legal,
        }

    def _metrics(self, out: dict[str, torch.Tensor], batch: Batch) -> Values:
        greedy = out["q_min"].masked_fill(~out["legal"], ILLEGAL_LOGIT).argmax(-1)
        return {
            "total_loss": out["q_loss"] + out["net_loss"],
            "policy_loss": out["pi_loss"],
            "value_loss": out["v_loss"],
            "q_loss": out["q_loss"],
            "td_loss": out["td_loss"],
            "cql_penalty": out["penalty"],
            "q_mean": out["q1a"].mean(),
            "q_target_mean": out["y"].mean(),
            "q_max_legal_mean": out["v_target"].mean(),
            "greedy_matches_data": (greedy == batch.action).float().mean(),
            **policy_metrics(out["logp"].detach(), batch.policy, batch.legal_mask),
        }
