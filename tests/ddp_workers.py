"""The code each spawned rank of tests/test_distributed.py runs, kept apart from the tests so
that a rank imports only what it needs (every import is paid once per rank)."""

from __future__ import annotations

import os

import torch
from test_train_loop import SPEC, ScriptedSource

from trainer.distributed.agreement import Agreement
from trainer.distributed.ddp import training_forward
from trainer.distributed.process_group import DistContext, init_from_env, shutdown
from trainer.hooks.base import Hook
from trainer.model.networks import build_network
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.sources.wait_reason import WaitKind, WaitReason
from trainer.training.batch import Batch
from trainer.training.loop import DataWaitTimeout, TrainLoop, WaitPolicy
from trainer.training.lr_schedule import LRSchedule
from trainer.training.state import TrainState

WORLD = 2


def rank_env(rank: int, port: int, world: int = WORLD) -> dict[str, str]:
    """What torchrun sets for each worker."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }


def daemon_rank(rank: int, port: int, argv: list[str], out: str) -> None:
    os.environ.update(rank_env(rank, port))
    from trainer.commands.train import build_daemon  # the daemon's imports, in its ranks only
    from trainer.config import DaemonConfig, load_config
    from trainer.training.run import run_to_end

    cfg = load_config(DaemonConfig, argv)
    loop = build_daemon(cfg, None, init_from_env(cfg.device, timeout_s=30))
    run_to_end(loop)
    torch.save(
        {"net": loop.objective.net.state_dict(), "step": loop.state.step, "source": loop.source.stats()},
        out,
    )
    shutdown()


def deterministic_batches(n: int, size: int) -> list[Batch]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        policy = torch.rand(size, SPEC.num_actions, generator=g)
        out.append(
            Batch(
                obs=torch.rand(size, SPEC.obs_size, generator=g),
                legal_mask=torch.ones(size, SPEC.num_actions, dtype=torch.bool),
                policy=policy / policy.sum(-1, keepdim=True),
                value=torch.rand(size, generator=g) * 2 - 1,
            )
        )
    return out


def train_on(
    script: list,
    steps: int,
    ctx: DistContext | None = None,
    hooks: list[Hook] | None = None,
    max_wait: float = 0.0,
) -> TrainLoop:
    ctx = ctx or DistContext.single()
    torch.manual_seed(0)
    net = build_network(SPEC, "mlp", hidden=32, layers=2)
    objective = PolicyValueObjective(net, lr=1e-2, weight_decay=1e-4, grad_clip=0.5)
    objective.wrap_for_training(lambda n: training_forward(n, ctx, torch.device("cpu")))
    state = TrainState(mode="daemon", env_id="tictactoe", spec={}, network={})
    schedule = LRSchedule(peak=1e-2, warmup_steps=2, decay_steps=steps, min_ratio=0.1)
    loop = TrainLoop(
        objective,
        ScriptedSource(script, ends=True),
        state,
        schedule,
        steps,
        hooks or [],
        WaitPolicy(first=0.01, max_wait=max_wait),
        Agreement(ctx),
    )
    loop.run()
    return loop


class StopAt(Hook):
    """A stop asked for on one rank only, as a signal to that rank would."""

    name = "stop_at"

    def __init__(self, step: int):
        self.at = step

    def after_step(self, loop, metrics) -> None:
        if loop.step == self.at:
            loop.request_stop("SIGTERM")


def loop_rank(rank: int, port: int, steps: int, half: int, out: str) -> None:
    os.environ.update(rank_env(rank, port))
    ctx = init_from_env("cpu", timeout_s=30)
    script: list = [b for b in _halves(steps, half, rank)]
    if rank == 1:  # a rank without data for a while: the other holds its batch and waits too
        script.insert(2, WaitReason(WaitKind.TOO_FEW_ROWS, "not yet"))
        script.insert(5, WaitReason(WaitKind.TOO_FEW_ROWS, "not yet"))
    result: dict = {"net": train_on(script, steps, ctx).objective.net.state_dict()}
    # A stop on rank 1 alone stops both at the same step.
    stopped = train_on(_halves(steps, half, rank), steps, ctx, hooks=[StopAt(3)] if rank == 1 else [])
    result["stopped_at"] = stopped.state.step
    del stopped
    # Rank 1 never gets data: both give up after --max-wait, though rank 0 has batches.
    script = [WaitReason(WaitKind.NO_DB, "no db")] * 1000 if rank == 1 else _halves(steps, half, rank)
    try:
        train_on(script, steps, ctx, max_wait=0.3)
        result["gave_up"] = ""
    except DataWaitTimeout as exc:
        result["gave_up"] = str(exc)
    torch.save(result, out)
    shutdown()


def _halves(steps: int, half: int, rank: int) -> list[Batch]:
    return [
        Batch(
            **{
                k: getattr(b, k)[rank * half : (rank + 1) * half]
                for k in ("obs", "legal_mask", "policy", "value")
            }
        )
        for b in deterministic_batches(steps, 2 * half)
    ]


def offline_runs(rank: int, jobs: list[tuple[str, int, list[str]]], out: str) -> None:
    """One rank running offline commands one after another, each as `python -m trainer <mode>`
    runs it (its exit code included) in its own process group, at its own port; what each
    trained is saved to `out` for the test to compare across ranks."""
    from trainer.commands import bc, cql, iql, offline_common

    built: list[TrainLoop] = []
    build = offline_common.build_offline
    offline_common.build_offline = lambda *args: built.append(build(*args)) or built[-1]
    results = []
    for mode, port, argv in jobs:
        os.environ.update(rank_env(rank, port))
        code = {"bc": bc, "iql": iql, "cql": cql}[mode].main(argv)
        loop = built.pop()
        results.append(
            {
                "code": code,
                "objective": loop.objective.state_dict(),
                "step": loop.state.step,
                "stop_reason": loop.stop_reason,
            }
        )
    torch.save(results, out)
