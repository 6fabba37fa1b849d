"""The interface between the shared loop and one learning algorithm."""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, MutableMapping
from typing import Any

import torch
from torch import nn

from trainer.training.batch import Batch

log = logging.getLogger("trainer")


class Objective(ABC):
    """Owns its networks and optimisers; the loop only calls these methods.

    `train_step` receives the LR to use (a pure function of the global step, computed by
    the loop) and must set it on every optimiser param group before stepping, so a resumed
    run uses exactly the LR an uninterrupted one would.
    """

    name: str = "objective"
    # Some trained parameters get no gradient (data-parallel training must look for them).
    unused_parameters: bool = False

    @abstractmethod
    def train_step(self, batch: Batch, lr: float) -> MutableMapping[str, float]:
        """One optimisation step. Must return at least total_loss, policy_loss, value_loss
        and grad_norm (pre-clip global norm) as Python floats; a `StepMetrics` computes all
        but the guarded ones only when a hook reads them.

        A step whose loss or gradient is NaN/inf raises `NonFiniteStep` having changed
        nothing (see `StepGuard`): one bad batch must not poison the weights."""

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

    def wrap_for_training(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Run training forward passes through `wrap(net)` (DDP, autocast); weights, exports
        and evaluation keep the plain net."""
        raise NotImplementedError(f"the {self.name} objective cannot train data-parallel or with --amp")

    def compile(self) -> None:
        """Run the training forward and backward passes through `torch.compile` (eager
        again, after one warning, when compilation fails). Only the loss function is
        compiled, never a module: weights, checkpoints and exports are the plain ones."""
        self.train_losses = CompiledOrEager(self.train_losses, f"the {self.name} update")

    def load_policy_weights(self, net_state: dict[str, Any]) -> None:
        """Initialise from another run's policy/value network (--init-from)."""
        self.export_module().load_state_dict(net_state)


class CompiledOrEager:
    """`torch.compile(fn)` that falls back to `eager` (by default `fn` itself) for good when
    compiling fails (no C++ compiler, an operation the compiler does not support). `eager`
    computes what `fn` does, in a form that runs well without the compiler. A failure is
    assumed to be the compiler's: an error of `fn` itself recurs on its eager call and
    propagates from there. Compilation happens at the first call and again for each new
    input shape; a failed attempt changes no weights or buffers, so the eager call redoes
    the step exactly.

    `tensor_guards_only`: before each call the compiled code checks only its tensor inputs
    (shape, dtype, device: a new batch size compiles again), not the hundreds of attributes
    of the objective and its modules that it read while compiling, a check that costs a
    small update a good part of its time. For a function of settings and module structure
    that never change after construction; such a compilation serves this instance alone,
    never another object's call of the same function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        what: str,
        eager: Callable[..., Any] | None = None,
        *,
        tensor_guards_only: bool = False,
    ):
        self.eager, self.what = eager or fn, what
        if tensor_guards_only:
            self.compiled: Callable[..., Any] | None = torch.compile(
                fn,
                options={"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe},
                isolate_recompiles=True,
            )
        else:
            self.compiled = torch.compile(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001  any compiler failure means: run eager
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning("cannot compile %s, running it eagerly: %s", self.what, reason[:200])
                self.compiled = None
        return self.eager(*args, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


_HAS_FUSED_KERNELS = hasattr(torch, "_fused_adamw_") and hasattr(torch, "_fused_adam_")


class FusedStep:
    """`step()` of a fused Adam/AdamW straight into its kernel, once every parameter with a
    gradient has state (the first step, and any other case, goes through the optimiser's
    own `step`): the same update, without `Optimizer.step`'s per-call Python, which costs
    as much as the kernel for a small network. The state is the optimiser's own tensors,
    gathered each call, so `state_dict`/`load_state_dict` are untouched."""

    def step(self, closure=None):
        group = self.param_groups[0]
        # The kernels are private torch ops: a torch without them takes the public step.
        direct = _HAS_FUSED_KERNELS and closure is None and len(self.param_groups) == 1 and group["fused"]
        direct = direct and not (group["amsgrad"] or group["maximize"] or group["differentiable"])
        live = [p for p in group["params"] if p.grad is not None] if direct else []
        states = [self.state.get(p) for p in live]
        if not (live and all(states)):
            return super().step(closure)
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        beta1, beta2 = group["betas"]
        kernel(
            live,
            [p.grad for p in live],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )
        return None


class FusedAdamW(FusedStep, torch.optim.AdamW):
    pass


class FusedAdam(FusedStep, torch.optim.Adam):
    pass


def adam(params, *, lr: float, weight_decay: float, decoupled: bool = True) -> torch.optim.Optimizer:
    """AdamW (or Adam) with PyTorch's fused kernel where it has one (CPU, CUDA): one update
    over all tensors instead of a dozen small ops per tensor."""
    params = list(params)
    if params and params[0].device.type in ("cpu", "cuda"):
        cls = FusedAdamW if decoupled else FusedAdam
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay, foreach=True)


def drop_grads(params: list[torch.Tensor]) -> None:
    """`optimizer.zero_grad(set_to_none=True)` for a parameter list gathered once, without
    the optimiser's per-call bookkeeping."""
    for p in params:
        p.grad = None


def clip_and_norm(params, max_norm: float) -> torch.Tensor | float:
    """Global-norm clip; returns the pre-clip norm (recorded in stats) as a 0-d tensor, for
    the caller to bring to the host with its other figures in one transfer (0.0 without
    gradients). The arithmetic of `clip_grad_norm_`, in fused ops: on CPU it would loop
    over the tensors."""
    grads = [p.grad for p in params if p.grad is not None]
    return clip_grads(grads, max_norm) if grads else 0.0


def clip_grads(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """`clip_and_norm` on the gradient tensors themselves, in place (also inside a compiled
    graph, where the gradients are values rather than `.grad` fields)."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm > 0:
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    return norm


class NonFiniteStep(ArithmeticError):
    """A training step whose loss or gradient was NaN/inf; the objective applied nothing."""

    def __init__(self, metrics: dict[str, float], keys: list[str]):
        self.metrics, self.keys = metrics, keys
        super().__init__(", ".join(f"{k}={metrics[k]}" for k in keys))


class StepGuard:
    """Makes a training step all-or-nothing with respect to non-finite numbers.

    The optimiser is only stepped once the loss and the gradient norm are known to be
    finite; both are already Python floats by then (brought to the host together, the one
    device sync of a step), so checking them costs nothing more. The forward pass itself has
    a side effect before that point: in training mode it folds the batch into BatchNorm's
    running statistics, so those buffers are copied before the forward pass and put back
    when the step is refused.
    """

    def __init__(self, *modules: nn.Module):
        self.live = [b for m in modules for b in m.buffers()]
        self.saved = [b.detach().clone() for b in self.live]

    def begin(self) -> None:
        if self.live:
            torch._foreach_copy_(self.saved, self.live)

    def check(self, metrics: dict[str, float], *keys: str) -> None:
        """Raise `NonFiniteStep` (buffers restored) unless every `metrics[key]` is finite."""
        bad = [k for k in keys if not math.isfinite(metrics[k])]
        if bad:
            if self.live:
                with torch.no_grad():
                    torch._foreach_copy_(self.live, self.saved)
            raise NonFiniteStep(metrics, bad)
