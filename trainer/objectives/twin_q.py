"""What IQL and CQL share: Q critics with Polyak targets beside the exported net.

A twin-Q objective owns two networks with separate optimisers: `net` (the exported
policy-value network, `build_network`) and `q` (one or two Q networks whose policy-head
outputs are Q(s, .)), plus `q_target`, a frozen Polyak average of `q`. Two critics (the
default) take the minimum or mean of both where one critic would over-estimate; one critic
(`--critics 1`, d3rlpy's discrete default) costs about two thirds of the arithmetic per
update. Subclasses define `losses(batch, nets)` (returning at least `net_loss` and
`q_loss`) and `_metrics(out, batch)`; the update itself (one backward over disjoint
parameters, clip, step, Polyak) is here.

The forward passes that carry gradients go through `nets(obs)`, net and q as one module,
so under torchrun one DistributedDataParallel wrapper averages the gradients of both;
the target net follows q by the same Polyak step on every rank.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainer.objectives.base import (
    CompiledOrEager,
    Objective,
    StepGuard,
    adam,
    clip_and_norm,
    drop_grads,
    set_lr,
)
from trainer.objectives.policy_value import ILLEGAL_LOGIT
from trainer.objectives.step_metrics import StepMetrics, Values, as_floats
from trainer.training.batch import Batch


class TwinQ(nn.Module):
    """One or two independent Q networks (`q1`, `q2`); each is a policy-value net whose
    logits are Q(s, .) (their value heads are never evaluated)."""

    def __init__(self, make_net: Callable[[], nn.Module], count: int = 2):
        super().__init__()
        if count not in (1, 2):
            raise ValueError(f"critics must be 1 or 2, not {count}")
        self.q1 = make_net()
        if count == 2:
            self.q2 = make_net()
        self.critics = [self.q1] if count == 1 else [self.q1, self.q2]

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(q.policy_logits(obs) for q in self.critics)


def critic_count(q_state: dict[str, Any]) -> int:
    return 2 if any(k.startswith("q2.") for k in q_state) else 1


def q_mean(qs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return qs[0] if len(qs) == 1 else (qs[0] + qs[1]) / 2


def summed(terms: list[torch.Tensor]) -> torch.Tensor:
    """One loss per critic, added (each critic's gradient is its own term's)."""
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def q_min(qs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return qs[0] if len(qs) == 1 else torch.min(qs[0], qs[1])


class TrainingNets(nn.Module):
    """`net` and `q` on the same observations: ((logits, value), (q1[, q2]))."""

    def __init__(self, net: nn.Module, q: TwinQ):
        super().__init__()
        self.net, self.q = net, q

    def forward(self, obs: torch.Tensor):
        return self.net(obs), self.q(obs)


def frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target.eval()


class Polyak:
    """target <- target + rate * (online - target), over tensor lists gathered once."""

    def __init__(self, target: nn.Module, online: nn.Module, rate: float):
        self.t_params, self.o_params = list(target.parameters()), list(online.parameters())
        self.t_bufs, self.o_bufs = list(target.buffers()), list(online.buffers())
        self.rate = rate

    @torch.no_grad()
    def __call__(self) -> None:
        torch._foreach_lerp_(self.t_params, self.o_params, self.rate)
        if self.t_bufs:
            torch._foreach_copy_(self.t_bufs, self.o_bufs)  # BatchNorm statistics follow the online net


def has_modes(module: nn.Module) -> bool:
    """Whether train and eval mode compute differently (BatchNorm, dropout). Switching
    modes walks every submodule, so modules without such layers are not switched."""
    modal = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return any(isinstance(m, modal) for m in module.modules())


def masked_max(q: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    """max over legal actions; 0 where no action is legal (terminal states)."""
    best = q.masked_fill(~legal, ILLEGAL_LOGIT).max(-1).values
    return torch.where(legal.any(-1), best, torch.zeros_like(best))


def opponent_sign(player_count: int) -> float:
    return -1.0 if player_count == 2 else 1.0


def gather(q: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    return q.gather(1, action.unsqueeze(1)).squeeze(1)


class TwinQObjective(Objective):
    unused_parameters = True  # the critics' value heads: only their policy heads are Q

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
        critics: int = 2,
    ):
        self.net = net
        device = next(net.parameters()).device
        self.q = TwinQ(make_net, critics).to(device)
        self.q_target = frozen_copy(self.q)
        self.net_params, self.q_params = list(net.parameters()), list(self.q.parameters())
        self.opt_net = adam(self.net_params, lr=lr, weight_decay=weight_decay)
        self.opt_q = adam(self.q_params, lr=lr, weight_decay=weight_decay)
        self.grad_clip, self.gamma, self.value_weight = grad_clip, gamma, value_weight
        self.polyak = Polyak(self.q_target, self.q, target_update_rate)
        self.modal = has_modes(net) or has_modes(self.q)
        self.nets = TrainingNets(net, self.q)
        self.train_nets: nn.Module = self.nets  # or a wrapper of it (DDP)
        self.sign = opponent_sign(player_count)
        self.guard = StepGuard(self.net, self.q)
        self.train_losses = self.losses  # what train_step calls: compile() replaces it

    @abstractmethod
    def losses(self, batch: Batch, nets: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """At least `net_loss` and `q_loss`, plus whatever `_metrics` reports; `nets(batch.obs)`
        (default `self.nets`) is the forward pass the losses' gradients flow through."""

    @abstractmethod
    def _metrics(self, out: dict[str, torch.Tensor], batch: Batch) -> Values:
        """0-d tensors (or floats) by name; brought to the host only when read."""

    def eval_forward(self, module: nn.Module, obs: torch.Tensor):
        """`module(obs)` in eval mode (BatchNorm on its running statistics, no batch update),
        the module's mode put back after; called under no_grad for bootstrap targets."""
        if not self.modal:
            return module(obs)
        was_training = module.training
        module.eval()
        try:
            return module(obs)
        finally:
            module.train(was_training)

    def _train_mode(self) -> None:
        if not (self.net.training and self.q.training):  # .train() walks every submodule
            self.net.train()
            self.q.train()

    def train_step(self, batch: Batch, lr: float) -> StepMetrics:
        self._train_mode()
        set_lr(self.opt_net, lr)
        set_lr(self.opt_q, lr)
        self.guard.begin()
        out = self.train_losses(batch, self.train_nets)
        drop_grads(self.net_params)
        drop_grads(self.q_params)
        total = out["net_loss"] + out["q_loss"]
        total.backward()  # disjoint parameters (q targets detached): one backward
        grad_norm = clip_and_norm(self.net_params, self.grad_clip)
        q_grad_norm = clip_and_norm(self.q_params, self.grad_clip)
        # Only what the guard checks now; the rest when a hook reads it.
        known = as_floats({"total_loss": total, "grad_norm": grad_norm, "q_grad_norm": q_grad_norm})
        metrics = StepMetrics(known, lambda: self._metrics(out, batch))
        self.guard.check(metrics, "total_loss", "grad_norm", "q_grad_norm")
        self.opt_net.step()
        self.opt_q.step()
        self.polyak()
        return metrics

    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, float]:
        self.net.eval()
        self.q.eval()
        return as_floats(self._metrics(self.losses(batch, self.nets), batch))

    def compile(self) -> None:
        """The losses through `torch.compile`. Plain nets without train/eval differences
        (no BatchNorm, no dropout) are checked on their tensor inputs only: the settings and
        modules the losses read never change after construction. A wrapped run (DDP) and
        modal nets keep the compiler's full checks."""
        lean = self.train_nets is self.nets and not self.modal
        self.train_losses = CompiledOrEager(self.losses, f"the {self.name} update", tensor_guards_only=lean)

    def wrap_for_training(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self.train_nets = wrap(self.nets)
        if isinstance(self.train_losses, CompiledOrEager):  # compiled before: full checks for the wrapper
            self.compile()

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
        saved, ours = critic_count(state["q"]), len(self.q.critics)
        if saved != ours:
            raise ValueError(f"it trained {saved} critic(s), this run asks for --critics {ours}")
        self.net.load_state_dict(state["net"])
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.opt_net.load_state_dict(state["opt_net"])
        self.opt_q.load_state_dict(state["opt_q"])
