"""`python -m trainer [train]`: the self-play training daemon.

Waits for the replay DB, trains AlphaZero-style on a moving window of it, publishes ONNX
models the actors hot-reload, checkpoints everything a resume needs, and keeps
stats.json current. Stop it with Ctrl-C or SIGTERM: it finishes the step, saves,
publishes and exits 0. Run it again and it continues where it stopped.

Under torchrun every rank trains on its own batches from the replay and gradients are
averaged (trainer/distributed/); rank 0 alone writes checkpoints, models and stats.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

from trainer import __version__
from trainer.config import DaemonConfig, load_config
from trainer.distributed.agreement import Agreement
from trainer.distributed.ddp import prepare_for_ranks
from trainer.distributed.process_group import DistContext, env_rank, init_from_env, rank_log_level
from trainer.distributed.rank_source import RankSource
from trainer.distributed.ranks import rank_seed
from trainer.evaluator.sprt import parse_elo_bounds
from trainer.games import GameSpec, get_game
from trainer.hooks.checkpoint import CheckpointHook
from trainer.hooks.evaluate import EvalHook, Gate
from trainer.hooks.metrics import StatsExporter, serve_trainer_metrics
from trainer.hooks.progress_log import ProgressLogHook
from trainer.hooks.publish import PublishHook
from trainer.hooks.stats import StatsHook
from trainer.model.networks import resolve_net_kind
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.replay.backend import read_replay_spec, redact_url
from trainer.replay.schema import SchemaError
from trainer.runtime import setup_logging, setup_torch
from trainer.sources.replay_source import ReplaySource
from trainer.training.loop import DataWaitTimeout, TrainLoop, WaitPolicy
from trainer.training.lr_schedule import LRSchedule
from trainer.training.run import StartPolicy, claim_checkpoint_dir, execute, start_state_on_ranks
from trainer.training.state import TrainState

log = logging.getLogger("trainer")


def schedule_from(cfg: DaemonConfig) -> LRSchedule:
    # With --steps 0 the run has no end, so the cosine spans --lr-decay-steps and then
    # stays at its floor.
    return LRSchedule(
        peak=cfg.lr,
        warmup_steps=cfg.lr_warmup_steps,
        decay_steps=cfg.steps or cfg.lr_decay_steps,
        min_ratio=cfg.lr_min_ratio,
        enabled=cfg.lr_schedule,
    )


def wait_for_game_spec(cfg: DaemonConfig) -> GameSpec:
    """Shapes from the DB's game_metadata; a known game need not wait for the DB."""
    try:
        known: GameSpec | None = get_game(cfg.env_id).spec
    except ValueError:
        known = None
    started, delay = time.monotonic(), cfg.wait_interval
    while True:
        spec = read_replay_spec(cfg.db, cfg.env_id)
        if spec is not None:
            return spec
        if known is not None:
            return known
        waited = time.monotonic() - started
        if cfg.max_wait and waited >= cfg.max_wait:
            raise DataWaitTimeout(
                f"no game_metadata row for {cfg.env_id!r} in {redact_url(cfg.db)} after {waited:.0f}s"
            )
        log.info("waiting for %s to describe env_id %r (game_metadata)", redact_url(cfg.db), cfg.env_id)
        time.sleep(delay)
        delay = min(30.0, delay * 2)


def exporter_hooks(cfg: DaemonConfig) -> list[StatsExporter]:
    """Prometheus and TensorBoard, when asked for: set up first, so a busy port or a missing
    package is an error at once, not after waiting for data."""
    hooks: list[StatsExporter] = []
    if (metrics := serve_trainer_metrics(cfg)) is not None:
        hooks.append(metrics)
    if cfg.tensorboard is not None:
        from trainer.hooks.tensorboard import TensorBoardHook

        hooks.append(TensorBoardHook(cfg.tensorboard))
    return hooks


def rank_source(cfg: DaemonConfig, ctx: DistContext, device: torch.device) -> RankSource:
    """This rank's replay reader: its own RNG stream, its share of the global reuse budget."""
    rank_cfg = cfg.model_copy(
        update={"seed": rank_seed(cfg.seed, ctx.rank), "max_reuse": cfg.max_reuse / ctx.world_size}
    )
    # Built on the CPU: RankSource copies each batch to the device from pinned memory.
    return RankSource(ReplaySource(rank_cfg, device="cpu"), ctx, cfg.batch_size, cfg.seed, device)


def build_daemon(
    cfg: DaemonConfig, exporters: list[StatsExporter] | None = None, ctx: DistContext | None = None
) -> TrainLoop:
    """Everything the daemon runs, resumed from the latest checkpoint unless --fresh.

    Under torchrun (`ctx`) each rank builds the same net and its own source; rank 0 alone
    claims and reads the checkpoint folder and has hooks (checkpoints, publish, stats,
    evaluation, logs): the other ranks never touch those folders.
    """
    ctx = ctx or DistContext.single()
    policy = StartPolicy(
        mode="daemon",
        checkpoint_dir=cfg.checkpoint_dir,
        fresh=cfg.fresh,
        model_dir=cfg.model_dir,
        init_from=cfg.init_from,
        resume_by_default=True,
    )
    # Claimed before waiting for the DB: a second daemon on these folders is refused at once.
    if ctx.is_main:
        claim_checkpoint_dir(cfg.checkpoint_dir)
    setup_torch(cfg.threads, cfg.device, rank_seed(cfg.seed, ctx.rank))
    device = torch.device(ctx.device(cfg.device))  # with several GPUs, the local rank's
    spec = wait_for_game_spec(cfg)
    kind = resolve_net_kind(cfg.net, spec)
    network = cfg.network_description(kind)
    net = cfg.build_network(spec, kind).to(device)
    objective = PolicyValueObjective(
        net,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        policy_weight=cfg.policy_weight,
        value_weight=cfg.value_weight,
    )
    state = TrainState(
        mode="daemon",
        env_id=cfg.env_id,
        spec=dataclasses.asdict(spec),
        network=network,
        config_json=cfg.model_dump_json(),
    )
    state = start_state_on_ranks(policy, state, objective, ctx)
    prepare_for_ranks(objective, ctx, device, cfg.batch_size, cfg.amp)

    source = rank_source(cfg, ctx, device)
    if state.source:
        source.load_state_dict(state.source, state.step)

    provenance = {
        "env_id": cfg.env_id,
        "mode": "daemon",
        "network": str(network),
        "trainer_version": __version__,
    }
    exporters = exporters or []
    hooks = (
        []
        if not ctx.is_main
        else [
            CheckpointHook(cfg.checkpoint_dir, cfg.checkpoint_interval, cfg.max_checkpoints),
            PublishHook(cfg.model_dir, spec, cfg.checkpoint_interval, cfg.max_checkpoints, provenance),
            # Also with --eval-interval 0: it keeps the run's eval_history in the checkpoint.
            EvalHook(
                cfg.model_dir,
                cfg.env_id,
                cfg.eval_interval,
                cfg.eval_games,
                seed=cfg.seed,
                gate=Gate(cfg.gate_games, parse_elo_bounds(cfg.gate_sprt)) if cfg.gate else None,
            ),
            *exporters,
            StatsHook(
                cfg.stats,
                cfg.stats_interval,
                cfg.env_id,
                "daemon",
                cfg.steps,
                cfg.history_size,
                listeners=[e.on_stats for e in exporters],
            ),
            ProgressLogHook(cfg.log_interval, cfg.steps),
        ]
    )
    loop = TrainLoop(
        objective,
        source,
        state,
        schedule_from(cfg),
        cfg.steps,
        hooks,
        WaitPolicy(first=cfg.wait_interval, max_wait=cfg.max_wait),
        Agreement(ctx, device),
    )
    loop.restore_hooks()
    return loop


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(
        DaemonConfig, argv, prog="python -m trainer [train]", description=__doc__.split("\n\n")[0]
    )
    main_rank = env_rank() == 0
    setup_logging(rank_log_level(cfg.log_level, env_rank()), cfg.log_format)
    exporters = exporter_hooks(cfg) if main_rank else []

    def build() -> TrainLoop:
        ctx = init_from_env(cfg.device, cfg.dist_backend, cfg.dist_timeout)
        return build_daemon(cfg, exporters, ctx)

    return execute(build, cfg.checkpoint_dir, input_errors=(SchemaError,))
