"""Discrete Conservative Q-Learning (Kumar et al. 2020, CQL(H)) for two-player zero-sum games.

Networks: twin Q networks q1, q2 with Polyak targets (TwinQ, shared with IQL; with
`--critics 1` q1 alone, and min and mean below are q1 itself), and the
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
from trainer.objectives.twin_q import TwinQObjective, gather, masked_max, q_mean, q_min, summed
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
            online_next = q_mean(self.eval_forward(self.q, batch.next_obs))
            best_next = online_next.masked_fill(~next_legal, ILLEGAL_LOGIT).argmax(-1)
            opp_value = gather(q_mean(self.q_target(batch.next_obs)), best_next)
            opp_value = torch.where(next_legal.any(-1), opp_value, torch.zeros_like(opp_value))
            y = batch.reward + self.gamma * (1.0 - batch.done) * self.sign * opp_value

        (logits, v), qs = (nets or self.nets)(batch.obs)
        qas = [gather(q, a) for q in qs]
        td_loss = summed([F.mse_loss(qa, y) for qa in qas])
        lses = [q.masked_fill(~legal, ILLEGAL_LOGIT).logsumexp(-1) for q in qs]
        penalty = summed([(lse - qa).mean() for lse, qa in zip(lses, qas)])
        q_loss = td_loss + self.alpha * penalty

        pessimistic = q_min(qs).detach()
        target_pi = masked_log_softmax(pessimistic / self.temperature, legal).exp()
        v_target = masked_max(pessimistic, legal).clamp(-1.0, 1.0)
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
            "q1a": qas[0],
            "y": y,
            "v_target": v_target,
            "logp": logp,
            "q_min": pessimistic,
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
