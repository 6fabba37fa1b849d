"""Assembly shared by every offline mode (imitation, bc, iql, cql): one place, like train.py.

    data file -> OfflineDataset (validated tensors) or HDF5Chunks (streamed)
              -> seeded split by game -> ShuffledSource / ChunkStreamSource (+ validation batches)
    GameSpec from the data -> build_network -> the mode's Objective
    --resume / --fresh / --init-from -> TrainState (mode = imitation|bc|iql|cql), see run.py
    TrainLoop + hooks: validation, checkpoint, publish (ONNX), stats.json, log, progress bar

The run itself (the folder lock, resume / --init-from / --fresh, signals, exit codes) is
trainer/training/run.py, the same as the daemon's. A mode command only supplies its config model and a function building its objective.
Under torchrun each rank trains on its own shard of every epoch (offline_source.py) with
its nets in DistributedDataParallel; rank 0 alone reads the checkpoint folder and has the
hooks that write (checkpoint, publish, stats, logs), and shares its validation figures.
Epoch modes (imitation, bc) run `epochs * steps_per_epoch` global steps; step modes (iql,
cql) run `--steps`. Either way the LR is the shared step schedule (times the plateau
multiplier when --lr-scheduler plateau), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainer import __version__
from trainer.config import load_config
from trainer.config.offline import OfflineConfig, OfflineRLConfig, SupervisedConfig
from trainer.distributed.agreement import Agreement
from trainer.distributed.ddp import prepare_for_ranks
from trainer.distributed.process_group import DistContext, env_rank, init_from_env, rank_log_level
from trainer.games import KNOWN_ENV_IDS, GameSpec
from trainer.hooks.base import Hook
from trainer.hooks.checkpoint import CheckpointHook, CheckpointWrites
from trainer.hooks.final_eval import FinalEvalHook
from trainer.hooks.progress_bar import ProgressBarHook
from trainer.hooks.progress_log import ProgressLogHook
from trainer.hooks.publish import PublishHook
from trainer.hooks.stats import StatsHook
from trainer.hooks.validation import PlateauSchedule, ValidationHook
from trainer.model.networks import resolve_net_kind
from trainer.objectives.base import Objective
from trainer.runtime import setup_logging, setup_torch
from trainer.sources.offline_data import (
    HDF5Chunks,
    OfflineDataError,
    load_dataset,
    parse_action_offsets,
    should_stream,
)
from trainer.sources.offline_source import (
    ChunkEvalBatches,
    ChunkStreamSource,
    EvalBatches,
    ShuffledSource,
    split_chunks,
    split_rows,
)
from trainer.training.loop import TrainLoop
from trainer.training.lr_schedule import LRSchedule
from trainer.training.run import StartPolicy, execute, start_state_on_ranks
from trainer.training.state import TrainState

log = logging.getLogger("trainer")

# (config, spec, the policy-value net, a factory of further nets of the same architecture)
ObjectiveFactory = Callable[[OfflineConfig, GameSpec, nn.Module, Callable[[], nn.Module]], Objective]


def network_kind(cfg: OfflineConfig, spec: GameSpec) -> str:
    # A game known only from its data has no trustworthy board layout: use the MLP.
    if cfg.net == "auto" and spec.env_id not in KNOWN_ENV_IDS:
        return "mlp"
    return resolve_net_kind(cfg.net, spec)


@dataclass
class OfflineData:
    spec: GameSpec
    source: ShuffledSource | ChunkStreamSource
    validation: EvalBatches | ChunkEvalBatches | None


def load_offline_data(
    cfg: OfflineConfig, device: torch.device, transitions: bool, epochs: int, ctx: DistContext | None = None
) -> OfflineData:
    """The checked training source (this rank's shard) and validation batches for `cfg.data`,
    in memory or streamed."""
    ctx = ctx or DistContext.single()
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
    offsets = parse_action_offsets(getattr(cfg, "action_offsets", None))
    val_data = getattr(cfg, "val_data", None)
    if should_stream(cfg.data, cfg.stream_threshold_mb):
        if val_data is not None:
            raise OfflineDataError(
                f"{cfg.data}: --val-data is not supported while streaming; use --val-fraction"
            )
        log.info("streaming %s: checking every chunk before training", cfg.data)
        chunks = HDF5Chunks(
            cfg.data,
            cfg.chunk_rows,
            transitions=transitions,
            env_id=cfg.env_id,
            num_actions=cfg.num_actions,
            player_count=cfg.player_count,
        )
        spec = chunks.spec
        train_ids, val_ids = split_chunks(chunks.num_chunks, cfg.val_fraction, cfg.seed)
        source = ChunkStreamSource(
            chunks, train_ids, cfg.batch_size, cfg.seed, epochs, device, transitions, **shard
        )
        val_batches = (
            ChunkEvalBatches(chunks, val_ids, cfg.batch_size, device, transitions) if val_ids else None
        )
        log.info(
            "streaming %s: %d rows in %d chunks (%d for validation)",
            cfg.data,
            chunks.rows,
            chunks.num_chunks,
            len(val_ids),
        )
    else:
        data = load_dataset(
            cfg.data,
            transitions=transitions,
            env_id=cfg.env_id,
            num_actions=cfg.num_actions,
            action_offsets=offsets,
            player_count=cfg.player_count,
        ).to(device)
        spec = data.spec
        if val_data is not None:
            val = load_dataset(val_data, transitions=transitions, action_offsets=offsets, spec=spec).to(
                device
            )
            train_idx = torch.arange(len(data), device=device)
            val_idx = torch.arange(len(val), device=device)
        else:
            val = data
            train_idx, val_idx = split_rows(data, cfg.val_fraction, cfg.seed)
        if transitions:  # only plies whose successor is known (or that end the game)
            train_idx = train_idx[data.has_next[train_idx]]
            val_idx = val_idx[val.has_next[val_idx]]
        source = ShuffledSource(data, train_idx, cfg.batch_size, cfg.seed, epochs, **shard)
        val_batches = EvalBatches(val, val_idx, cfg.batch_size) if len(val_idx) else None
        log.info(
            "%s: %d rows in %d games of %s (obs %d, %d actions); %d training rows, %d validation rows%s",
            cfg.data,
            len(data),
            data.num_episodes,
            spec.env_id,
            spec.obs_size,
            spec.num_actions,
            len(train_idx),
            len(val_idx),
            "" if data.has_values else "; no outcomes: the value head is not trained",
        )

    return OfflineData(spec, source, val_batches)


def build_offline(
    mode: str, cfg: OfflineConfig, make_objective: ObjectiveFactory, ctx: DistContext | None = None
) -> TrainLoop:
    ctx = ctx or DistContext.single()
    # The same seed on every rank: the same split, epoch order and initial weights.
    setup_torch(cfg.threads, cfg.device, cfg.seed)
    device = torch.device(ctx.device(cfg.device))  # with several GPUs, the local rank's
    epoch_based = isinstance(cfg, SupervisedConfig)
    data = load_offline_data(
        cfg,
        device,
        transitions=isinstance(cfg, OfflineRLConfig),
        epochs=cfg.epochs if epoch_based else 0,
        ctx=ctx,
    )
    spec, source, val_batches = data.spec, data.source, data.validation

    kind = network_kind(cfg, spec)
    network = cfg.network_description(kind)

    def make_net() -> nn.Module:
        return cfg.build_network(spec, kind).to(device)

    objective = make_objective(cfg, spec, make_net(), make_net)
    if cfg.compile:
        objective.compile()
    state = TrainState(
        mode=mode,
        env_id=spec.env_id,
        spec=dataclasses.asdict(spec),
        network=network,
        config_json=cfg.model_dump_json(),
    )

    policy = StartPolicy(
        mode=mode,
        checkpoint_dir=cfg.checkpoint_dir,
        fresh=cfg.fresh,
        model_dir=cfg.model_dir,
        init_from=cfg.init_from,
        resume=cfg.resume,
    )
    state = start_state_on_ranks(policy, state, objective, ctx)
    prepare_for_ranks(objective, ctx, device, source.batch_size)
    if state.source:
        source.load_state_dict(state.source)

    # --- schedule and hooks ------------------------------------------------------------
    if epoch_based:
        total_steps = cfg.epochs * source.steps_per_epoch
        interval = cfg.save_every * source.steps_per_epoch
        cosine = cfg.lr_scheduler == "cosine"
        base = LRSchedule(
            peak=cfg.lr,
            warmup_steps=cfg.lr_warmup_steps,
            decay_steps=total_steps if cosine else 0,
            min_ratio=cfg.lr_min_ratio,
        )
        plateau = (
            PlateauSchedule(base, cfg.plateau_factor, cfg.plateau_patience)
            if cfg.lr_scheduler == "plateau" and val_batches is not None
            else None
        )
        schedule = plateau or base
        if cfg.patience and val_batches is None:
            log.warning("--patience %d ignored: no validation data", cfg.patience)
    else:
        total_steps, interval = cfg.steps, cfg.checkpoint_interval
        schedule = LRSchedule(
            peak=cfg.lr, warmup_steps=cfg.lr_warmup_steps, decay_steps=cfg.steps, min_ratio=cfg.lr_min_ratio
        )
        plateau = None

    provenance = {
        "env_id": spec.env_id,
        "mode": mode,
        "network": str(network),
        "data": str(cfg.data),
        "trainer_version": __version__,
    }
    hooks: list[Hook] = []
    writes = CheckpointWrites()
    if val_batches is not None:
        hooks.append(
            ValidationHook(
                val_batches,
                every=0 if epoch_based else interval,
                per_epoch=epoch_based,
                patience=cfg.patience if epoch_based else 0,
                best_dir=cfg.checkpoint_dir if epoch_based and ctx.is_main else None,
                plateau=plateau,
                writes=writes,
                ctx=ctx,
            )
        )
    if ctx.is_main:  # the other ranks never touch the output folders
        hooks += [
            CheckpointHook(cfg.checkpoint_dir, interval, cfg.max_checkpoints, writes),
            PublishHook(cfg.model_dir, spec, interval, cfg.max_checkpoints, provenance),
            StatsHook(cfg.stats, cfg.stats_interval, spec.env_id, mode, total_steps),
            ProgressLogHook(cfg.log_interval, total_steps),
        ]
    if cfg.eval_opponent is not None and ctx.is_main:  # after the publish hook: it plays the final model
        hooks.append(FinalEvalHook(cfg.model_dir, spec.env_id, cfg.eval_opponent, cfg.eval_games, cfg.seed))
    if cfg.progress and ctx.is_main:
        hooks.append(ProgressBarHook(mode, total_steps, validation=val_batches is not None))
    # Epoch modes end when the source runs out ("data source exhausted"); the hooks still
    # get the run's length for stats and the ETA.
    loop = TrainLoop(
        objective,
        source,
        state,
        schedule,
        0 if epoch_based else total_steps,
        hooks,
        agree=Agreement(ctx, device),
    )
    loop.restore_hooks()
    return loop


def run_offline(
    mode: str,
    config_model: type[OfflineConfig],
    argv: list[str] | None,
    doc: str,
    make_objective: ObjectiveFactory,
) -> int:
    """Parse the command line, train, and map bad input to `error: ...` and exit code 2."""
    cfg = load_config(config_model, argv, prog=f"python -m trainer {mode}", description=doc)
    setup_logging(rank_log_level(cfg.log_level, env_rank()), cfg.log_format)

    def build() -> TrainLoop:
        return build_offline(
            mode, cfg, make_objective, init_from_env(cfg.device, cfg.dist_backend, cfg.dist_timeout)
        )

    return execute(build, cfg.checkpoint_dir, input_errors=(OfflineDataError,))
