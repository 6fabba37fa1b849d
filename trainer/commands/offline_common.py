"""Assembly shared by every offline mode (imitation, bc, iql, cql): one place, like train.py.

    data file -> OfflineDataset (validated tensors) or HDF5Chunks (streamed)
              -> seeded split by game -> ShuffledSource / ChunkStreamSource (+ validation batches)
    GameSpec from the data -> build_network -> the mode's Objective
    --resume / --fresh / --init-from -> TrainState (mode = imitation|bc|iql|cql)
    TrainLoop + hooks: validation, checkpoint, publish (ONNX), stats.json, log, progress bar

A mode command only supplies its config model and a function building its objective.
Epoch modes (imitation, bc) run `epochs * steps_per_epoch` global steps; step modes (iql,
cql) run `--steps`. Either way the LR is the shared step schedule (times the plateau
multiplier when --lr-scheduler plateau), so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from trainer import __version__
from trainer.config import ConfigError, load_config
from trainer.config.offline import OfflineConfig, OfflineRLConfig, SupervisedConfig
from trainer.games import KNOWN_ENV_IDS, GameSpec
from trainer.hooks.base import Hook
from trainer.hooks.checkpoint import CheckpointHook
from trainer.hooks.progress_log import ProgressLogHook
from trainer.hooks.publish import PublishHook
from trainer.hooks.stats import StatsHook
from trainer.hooks.validation import BEST_NAME, PlateauSchedule, ValidationHook
from trainer.model.networks import resolve_net_kind
from trainer.objectives.base import Objective
from trainer.runtime import install_stop_signals, setup_logging, setup_torch
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
from trainer.training.loop import TrainingDiverged, TrainLoop
from trainer.training.lr_schedule import LRSchedule
from trainer.training.state import (
    LATEST_NAME,
    CheckpointError,
    TrainState,
    check_compatible,
    find_latest_checkpoint,
    load_checkpoint_file,
    load_latest_checkpoint,
    restore_rng,
)

log = logging.getLogger("trainer")

# (config, spec, the policy-value net, a factory of further nets of the same architecture)
ObjectiveFactory = Callable[[OfflineConfig, GameSpec, nn.Module, Callable[[], nn.Module]], Objective]


class ProgressBarHook(Hook):
    """`bc [#####-----] 48% 480/1000 52.1 it/s ETA 0:00:10 loss 0.731` on stderr.

    Redrawn in place (at most 5 times a second) on a terminal; one line per 10% otherwise,
    so log files stay readable.
    """

    name = "progress_bar"

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total = label, max(1, total)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = self._last = 0.0
        self._step0 = 0
        self._next_decile = 1

    def on_start(self, loop) -> None:
        self._t0, self._step0 = time.monotonic(), loop.state.step
        self._next_decile = loop.state.step * 10 // self.total + 1

    def line(self, step: int, now: float, loss: float) -> str:
        frac = min(1.0, step / self.total)
        done = step - self._step0
        rate = done / max(1e-9, now - self._t0)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "--:--:--"
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        return f"{self.label} [{bar}] {100 * frac:3.0f}% {step}/{self.total} {rate:.1f} it/s ETA {eta_s} loss {loss:.4f}"

    def after_step(self, loop, metrics) -> None:
        now, step = time.monotonic(), loop.state.step
        loss = float(metrics.get("total_loss", 0.0))
        if self.tty:
            if now - self._last >= 0.2 or step >= self.total:
                self._last = now
                self.stream.write("\r" + self.line(step, now, loss))
                self.stream.flush()
        elif step * 10 // self.total >= self._next_decile:
            self._next_decile = step * 10 // self.total + 1
            self.stream.write(self.line(step, now, loss) + "\n")
            self.stream.flush()

    def on_stop(self, loop) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def network_kind(cfg: OfflineConfig, spec: GameSpec) -> str:
    # A game known only from its data has no trustworthy board layout: use the MLP.
    if cfg.net == "auto" and spec.env_id not in KNOWN_ENV_IDS:
        return "mlp"
    return resolve_net_kind(cfg.net, spec)


def _clear_checkpoints(folder: Path) -> None:
    for p in [*folder.glob("ckpt_step_*.pt"), folder / LATEST_NAME, folder / BEST_NAME]:
        p.unlink(missing_ok=True)


def build_offline(mode: str, cfg: OfflineConfig, make_objective: ObjectiveFactory) -> TrainLoop:
    device = setup_torch(cfg.threads, cfg.device, cfg.seed)
    epoch_based = isinstance(cfg, SupervisedConfig)
    transitions = isinstance(cfg, OfflineRLConfig)
    offsets = parse_action_offsets(getattr(cfg, "action_offsets", None))
    val_data = getattr(cfg, "val_data", None)
    epochs = cfg.epochs if epoch_based else 0

    # --- data --------------------------------------------------------------------------
    if should_stream(cfg.data, cfg.stream_threshold_mb):
        if val_data is not None:
            raise OfflineDataError(f"{cfg.data}: --val-data is not supported while streaming; use --val-fraction")
        log.info("streaming %s: checking every chunk before training", cfg.data)
        chunks = HDF5Chunks(cfg.data, cfg.chunk_rows, transitions=transitions, env_id=cfg.env_id,
                            num_actions=cfg.num_actions, player_count=cfg.player_count)
        spec = chunks.spec
        train_ids, val_ids = split_chunks(chunks.num_chunks, cfg.val_fraction, cfg.seed)
        source = ChunkStreamSource(chunks, train_ids, cfg.batch_size, cfg.seed, epochs, device, transitions)
        val_batches = ChunkEvalBatches(chunks, val_ids, cfg.batch_size, device, transitions) if val_ids else None
        log.info("streaming %s: %d rows in %d chunks (%d for validation)", cfg.data, chunks.rows,
                 chunks.num_chunks, len(val_ids))
    else:
        data = load_dataset(cfg.data, transitions=transitions, env_id=cfg.env_id, num_actions=cfg.num_actions,
                            action_offsets=offsets, player_count=cfg.player_count).to(device)
        spec = data.spec
        if val_data is not None:
            val = load_dataset(val_data, transitions=transitions, action_offsets=offsets, spec=spec).to(device)
            train_idx = torch.arange(len(data), device=device)
            val_idx = torch.arange(len(val), device=device)
        else:
            val = data
            train_idx, val_idx = split_rows(data, cfg.val_fraction, cfg.seed)
        if transitions:  # only plies whose successor is known (or that end the game)
            train_idx = train_idx[data.has_next[train_idx]]
            val_idx = val_idx[val.has_next[val_idx]]
        source = ShuffledSource(data, train_idx, cfg.batch_size, cfg.seed, epochs)
        val_batches = EvalBatches(val, val_idx, cfg.batch_size) if len(val_idx) else None
        log.info(
            "%s: %d rows in %d games of %s (obs %d, %d actions); %d training rows, %d validation rows%s",
            cfg.data, len(data), data.num_episodes, spec.env_id, spec.obs_size, spec.num_actions,
            len(train_idx), len(val_idx), "" if data.has_values else "; no outcomes: the value head is not trained",
        )

    # --- model and objective -----------------------------------------------------------
    kind = network_kind(cfg, spec)
    network = cfg.network_description(kind)

    def make_net() -> nn.Module:
        return cfg.build_network(spec, kind).to(device)

    objective = make_objective(cfg, spec, make_net(), make_net)
    state = TrainState(mode=mode, env_id=spec.env_id, spec=dataclasses.asdict(spec), network=network,
                       config_json=cfg.model_dump_json())

    # --- resume / fresh / init-from ----------------------------------------------------
    ckpt = find_latest_checkpoint(cfg.checkpoint_dir) if cfg.checkpoint_dir.is_dir() else None
    if cfg.resume:
        if ckpt is None:
            raise CheckpointError(f"--resume: no checkpoint in {cfg.checkpoint_dir}")
        ckpt, loaded = load_latest_checkpoint(cfg.checkpoint_dir)
        if loaded.mode != mode:
            raise CheckpointError(f"checkpoint {ckpt} is from a {loaded.mode} run, not {mode}; pass it with --init-from")
        check_compatible(loaded, spec.env_id, state.spec, network, ckpt)
        objective.load_state_dict(loaded.objective)
        source.load_state_dict(loaded.source)
        restore_rng(loaded.rng)
        loaded.config_json = state.config_json
        state = loaded
        log.info("resumed %s from %s at step %d", mode, ckpt, state.step)
    elif ckpt is not None and not cfg.fresh:
        raise CheckpointError(
            f"{cfg.checkpoint_dir} already holds a checkpoint ({ckpt.name}); pass --resume to continue "
            "that run or --fresh to start over"
        )
    elif cfg.init_from is not None:
        if not cfg.init_from.exists():
            raise CheckpointError(f"--init-from: {cfg.init_from} not found")
        init = load_checkpoint_file(cfg.init_from)
        check_compatible(init, spec.env_id, state.spec, network, cfg.init_from)
        if "net" not in init.objective:
            raise CheckpointError(f"--init-from: {cfg.init_from} has no policy-value network ('net')")
        objective.load_policy_weights(init.objective["net"])
        log.info("initialised the policy-value network from %s (%s run, step %d)", cfg.init_from, init.mode, init.step)

    # --- schedule and hooks ------------------------------------------------------------
    if epoch_based:
        total_steps = cfg.epochs * source.steps_per_epoch
        interval = cfg.save_every * source.steps_per_epoch
        cosine = cfg.lr_scheduler == "cosine"
        base = LRSchedule(peak=cfg.lr, warmup_steps=cfg.lr_warmup_steps, decay_steps=total_steps if cosine else 0,
                          min_ratio=cfg.lr_min_ratio)
        plateau = (PlateauSchedule(base, cfg.plateau_factor, cfg.plateau_patience)
                   if cfg.lr_scheduler == "plateau" and val_batches is not None else None)
        schedule = plateau or base
        if cfg.patience and val_batches is None:
            log.warning("--patience %d ignored: no validation data", cfg.patience)
    else:
        total_steps, interval = cfg.steps, cfg.checkpoint_interval
        schedule = LRSchedule(peak=cfg.lr, warmup_steps=cfg.lr_warmup_steps, decay_steps=cfg.steps,
                              min_ratio=cfg.lr_min_ratio)
        plateau = None

    loop_ref: list[TrainLoop] = []

    def metadata() -> dict[str, str]:
        loop = loop_ref[0]
        return {
            "env_id": spec.env_id, "mode": mode, "step": str(loop.state.step),
            "samples_trained": str(loop.state.samples_trained),
            "rows_seen": str(loop.source.stats().get("rows_seen", 0)),
            "trainer_version": __version__, "network": str(network), "data": str(cfg.data),
        }

    hooks: list[Hook] = []
    if val_batches is not None:
        hooks.append(ValidationHook(
            val_batches, every=0 if epoch_based else interval,
            patience=cfg.patience if epoch_based else 0,
            best_dir=cfg.checkpoint_dir if epoch_based else None, plateau=plateau,
        ))
    hooks += [
        CheckpointHook(cfg.checkpoint_dir, interval, cfg.max_checkpoints),
        PublishHook(cfg.model_dir, spec, interval, cfg.max_checkpoints, metadata=metadata),
        StatsHook(cfg.stats, cfg.stats_interval, spec.env_id, mode, total_steps),
        ProgressLogHook(cfg.log_interval, total_steps),
    ]
    if cfg.progress:
        hooks.append(ProgressBarHook(mode, total_steps))
    # Epoch modes end when the source runs out ("data source exhausted"); the hooks still
    # get the run's length for stats and the ETA.
    loop = TrainLoop(objective, source, state, schedule, 0 if epoch_based else total_steps, hooks)
    loop_ref.append(loop)
    loop.restore_hooks()
    if cfg.fresh and cfg.checkpoint_dir.is_dir():
        # Last, so a run rejected above (bad data, bad --init-from) leaves the old one intact.
        _clear_checkpoints(cfg.checkpoint_dir)
    return loop


def run_offline(mode: str, config_model: type[OfflineConfig], argv: list[str] | None, doc: str,
                make_objective: ObjectiveFactory) -> int:
    """Parse the command line, train, and map bad input to `error: ...` and exit code 2."""
    cfg = load_config(config_model, argv, prog=f"python -m trainer {mode}", description=doc)
    setup_logging(cfg.log_level)
    loop: TrainLoop | None = None

    def stop(name: str) -> None:
        if loop is None:
            raise KeyboardInterrupt
        loop.request_stop(name)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install_stop_signals(stop)
    try:
        loop = build_offline(mode, cfg, make_objective)
        try:
            loop.run()
        finally:
            loop.source.close()
        log.info("%s finished at step %d: %s", mode, loop.state.step, loop.stop_reason)
    except KeyboardInterrupt:
        log.info("stopped before training started")
        return 0
    except (OfflineDataError, CheckpointError, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "--device" in str(exc):
            raise ConfigError(str(exc)) from None
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
