"""Policy + value learning against given targets: AlphaZero, imitation and behaviour cloning.

One objective serves all three; only the targets differ. The daemon's batches carry the
MCTS visit distribution and the game outcome (the AlphaZero loss); the offline modes'
batches carry the one-hot of the played move, optionally smoothed over the legal moves,
and the outcome where the data has one (NaN elsewhere, left out of the value loss).

    loss = policy_weight * CE(target, masked softmax(logits)) + value_weight * MSE(value, z)
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from trainer.objectives.base import (
    CompiledOrEager,
    Objective,
    StepGuard,
    adam,
    clip_and_norm,
    clip_grads,
    drop_grads,
    set_lr,
)
from trainer.objectives.step_metrics import StepMetrics, as_floats
from trainer.training.batch import Batch

# Large negative instead of -inf: 0 * -inf would turn the loss into NaN on illegal moves.
ILLEGAL_LOGIT = -1e9


def masked_log_softmax(logits: torch.Tensor, legal_mask: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.masked_fill(~legal_mask, ILLEGAL_LOGIT), dim=-1)


def policy_metrics(
    logp: torch.Tensor, target: torch.Tensor, legal_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    probs = logp.exp()
    entropy = -(probs * logp.masked_fill(~legal_mask, 0.0)).sum(-1).mean()
    # A hit when the predicted move is one the target rates best: teachers with several
    # equally good moves spread their target over all of them.
    picked = target.gather(-1, logp.argmax(-1, keepdim=True)).squeeze(-1)
    accuracy = (picked >= target.max(-1).values - 1e-6).float().mean()
    return {"policy_entropy": entropy, "policy_accuracy": accuracy}


def smoothed_targets(target: torch.Tensor, legal: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Spread `smoothing` of the mass uniformly over the *legal* moves, never illegal ones."""
    if smoothing <= 0:
        return target
    legal_f = legal.float()
    uniform = legal_f / legal_f.sum(-1, keepdim=True).clamp(min=1.0)
    return (1.0 - smoothing) * target + smoothing * uniform


def masked_value_loss(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over the samples whose target is known (finite)."""
    known = torch.isfinite(target)
    diff = torch.where(known, value - torch.nan_to_num(target), torch.zeros_like(value))
    return (diff * diff).sum() / known.sum().clamp(min=1)


class PolicyValueObjective(Objective):
    def __init__(
        self,
        net: nn.Module,
        *,
        name: str = "alphazero",
        lr: float,
        weight_decay: float = 0.0,
        grad_clip: float = 0.0,
        optimizer: Literal["adamw", "adam"] = "adamw",
        label_smoothing: float = 0.0,
        policy_weight: float = 1.0,
        value_weight: float = 1.0,
    ):
        self.name = name
        self.net = net
        self.train_net = net  # what train_step calls: the net, or a wrapper of it (DDP)
        self.params = list(net.parameters())
        self.optimizer = adam(self.params, lr=lr, weight_decay=weight_decay, decoupled=optimizer == "adamw")
        self.grad_clip = grad_clip
        self.label_smoothing = label_smoothing
        self.policy_weight = policy_weight
        self.value_weight = value_weight
        self.guard = StepGuard(net)
        self.train_losses = self.losses  # what train_step calls: compile() replaces it
        self.whole_graph: CompiledOrEager | None = None  # compile() sets it

    def losses(self, batch: Batch, smoothing: float, net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        logits, value = (net or self.net)(batch.obs)
        logp = masked_log_softmax(logits, batch.legal_mask)
        target = smoothed_targets(batch.policy, batch.legal_mask, smoothing)
        policy_loss = -(target * logp).sum(-1).mean()
        value_loss = masked_value_loss(value.squeeze(-1), batch.value)
        total = self.policy_weight * policy_loss + self.value_weight * value_loss
        return {"total": total, "policy": policy_loss, "value": value_loss, "logp": logp}

    def _metrics(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        return {
            "total_loss": out["total"],
            "policy_loss": out["policy"],
            "value_loss": out["value"],
            **policy_metrics(out["logp"].detach(), batch.policy, batch.legal_mask),
        }

    def compile(self) -> None:
        """The plain net's whole forward, backward and clipping as one graph: no autograd
        engine, no per-parameter gradient accumulation, one call. The optimiser step stays
        the fused kernel, after the guard has seen the loss and the gradient norm. A wrapped
        net (DDP's gradient hooks, autocast) trains through the compiled loss alone, and so
        does a net with buffers: BatchNorm's in-place statistics do not trace as a pure
        function of the weights."""
        if self.train_net is not self.net or any(True for _ in self.net.buffers()):
            return super().compile()
        self.names = [name for name, _ in self.net.named_parameters()]
        self.whole_graph = CompiledOrEager(
            self._functional_gradients,
            f"the {self.name} update",
            eager=self._autograd_gradients,
            tensor_guards_only=True,
        )

    def _autograd_gradients(self, batch: Batch, params: list[torch.Tensor]) -> tuple[dict, None, Any]:
        """Forward, backward and clipping; the gradients are left in the parameters' `.grad`."""
        out = self.train_losses(batch, self.label_smoothing, self.train_net)
        drop_grads(self.params)
        out["total"].backward()
        return out, None, clip_and_norm(self.params, self.grad_clip)

    def _functional_gradients(self, batch: Batch, params: list[torch.Tensor]) -> tuple[dict, list, Any]:
        """The same as a pure function of `params` (the weights, detached), gradients returned."""

        def total(weights: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            def net(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return functional_call(self.net, dict(zip(self.names, weights)), (obs,))

            out = self.losses(batch, self.label_smoothing, net)
            return out["total"], out

        grads, out = grad(total, has_aux=True)(params)
        return out, grads, clip_grads(grads, self.grad_clip)

    def _gradients(self, batch: Batch) -> tuple[dict[str, torch.Tensor], Any]:
        """(the losses, the pre-clip gradient norm), with the clipped gradients in `.grad`."""
        if self.whole_graph is None:
            out, _, norm = self._autograd_gradients(batch, self.params)
            return out, norm
        out, grads, norm = self.whole_graph(batch, [p.detach() for p in self.params])
        if grads is not None:
            for p, g in zip(self.params, grads):
                p.grad = g
        return out, norm

    def train_step(self, batch: Batch, lr: float) -> StepMetrics:
        if not self.net.training:
            self.net.train()
        set_lr(self.optimizer, lr)
        self.guard.begin()
        out, grad_norm = self._gradients(batch)
        # Only what the guard checks now; the rest when a hook reads it.
        known = as_floats({"total_loss": out["total"], "grad_norm": grad_norm})
        metrics = StepMetrics(known, lambda: self._metrics(out, batch))
        self.guard.check(metrics, "total_loss", "grad_norm")
        self.optimizer.step()
        return metrics

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, float]:
        """Unsmoothed: a validation loss measures the data's own moves."""
        self.net.eval()
        return as_floats(self._metrics(self.losses(batch, 0.0), batch))

    def wrap_for_training(self, wrap) -> None:
        self.train_net = wrap(self.net)
        if self.whole_graph is not None:  # compiled before: the wrapper's hooks need autograd
            self.whole_graph = None
            super().compile()

    def export_module(self) -> nn.Module:
        return self.net

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
