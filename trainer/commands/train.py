"""`python -m trainer [train]`: the self-play training daemon.

Waits for the replay DB, trains AlphaZero-style on a moving window of it, publishes ONNX
models the actors hot-reload, checkpoints everything a resume needs, and keeps
stats.json current. Stop it with Ctrl-C or SIGTERM: it finishes the step, saves,
publishes and exits 0. Run it again and it continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

from trainer import __version__
from trainer.config import ConfigError, DaemonConfig, load_config
from trainer.games import GameSpec, get_game
from trainer.hooks.checkpoint import CheckpointHook
from trainer.hooks.progress_log import ProgressLogHook
from trainer.hooks.publish import PublishHook
from trainer.hooks.stats import StatsHook
from trainer.model.networks import resolve_net_kind
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.replay.backend import read_replay_spec, redact_url
from trainer.replay.schema import SchemaError
from trainer.runtime import install_stop_signals, setup_logging, setup_torch
from trainer.sources.replay_source import ReplaySource
from trainer.training.loop import (
    DataWaitTimeout,
    TrainingDiverged,
    TrainLoop,
    WaitPolicy,
)
from trainer.training.lr_schedule import LRSchedule
from trainer.training.state import (
    CheckpointError,
    TrainState,
    check_compatible,
    load_checkpoint_file,
    load_latest_checkpoint,
    restore_rng,
)

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
            raise DataWaitTimeout(f"no game_metadata row for {cfg.env_id!r} in {redact_url(cfg.db)} after {waited:.0f}s")
        log.info("waiting for %s to describe env_id %r (game_metadata)", redact_url(cfg.db), cfg.env_id)
        time.sleep(delay)
        delay = min(30.0, delay * 2)


def model_metadata(cfg: DaemonConfig, loop_ref: list) -> dict[str, str]:
    loop = loop_ref[0]
    src = loop.source.stats()
    return {
        "env_id": cfg.env_id,
        "step": str(loop.state.step),
        "samples_trained": str(loop.state.samples_trained),
        "rows_seen": str(src.get("rows_seen", 0)),
        "trainer_version": __version__,
        "mode": "daemon",
        "network": str(loop.state.network),
    }


def build_daemon(cfg: DaemonConfig) -> TrainLoop:
    """Everything the daemon runs, resumed from the latest checkpoint unless --fresh."""
    device = setup_torch(cfg.threads, cfg.device, cfg.seed)
    spec = wait_for_game_spec(cfg)
    kind = resolve_net_kind(cfg.net, spec)
    network = cfg.network_description(kind)
    net = cfg.build_network(spec, kind).to(device)
    objective = PolicyValueObjective(
        net, lr=cfg.lr, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
        policy_weight=cfg.policy_weight, value_weight=cfg.value_weight,
    )
    state = TrainState(
        mode="daemon", env_id=cfg.env_id, spec=dataclasses.asdict(spec), network=network,
        config_json=cfg.model_dump_json(),
    )

    found = None if cfg.fresh else load_latest_checkpoint(cfg.checkpoint_dir)
    ckpt = None
    if found is not None:
        ckpt, loaded = found
        if loaded.mode != "daemon":
            raise CheckpointError(f"checkpoint {ckpt} is from a {loaded.mode} run; pass it with --init-from, or use --fresh")
        check_compatible(loaded, cfg.env_id, state.spec, network, ckpt)
        objective.load_state_dict(loaded.objective)
        restore_rng(loaded.rng)
        loaded.config_json = state.config_json
        state = loaded
        log.info("resumed from %s at step %d (%d samples trained)", ckpt, state.step, state.samples_trained)
    elif cfg.init_from is not None:
        init = load_checkpoint_file(cfg.init_from)
        check_compatible(init, cfg.env_id, state.spec, network, cfg.init_from)
        objective.load_policy_weights(init.objective["net"])
        log.info("initialised weights from %s (%s run, step %d)", cfg.init_from, init.mode, init.step)

    source = ReplaySource(cfg, device=device)
    if ckpt is not None and state.source:
        source.load_state_dict(state.source)

    loop_ref: list[TrainLoop] = []
    hooks = [
        CheckpointHook(cfg.checkpoint_dir, cfg.checkpoint_interval, cfg.max_checkpoints),
        PublishHook(cfg.model_dir, spec, cfg.checkpoint_interval, cfg.max_checkpoints,
                    metadata=lambda: model_metadata(cfg, loop_ref)),
    ]
    if cfg.eval_interval:
        from trainer.evaluator.sprt import parse_elo_bounds
        from trainer.hooks.evaluate import EvalHook, Gate

        gate = Gate(cfg.gate_games, parse_elo_bounds(cfg.gate_sprt)) if cfg.gate else None
        hooks.append(EvalHook(cfg.model_dir, cfg.env_id, cfg.eval_interval, cfg.eval_games, seed=cfg.seed, gate=gate))
    hooks += [
        StatsHook(cfg.stats, cfg.stats_interval, cfg.env_id, "daemon", cfg.steps, cfg.history_size),
        ProgressLogHook(cfg.log_interval, cfg.steps),
    ]
    loop = TrainLoop(
        objective, source, state, schedule_from(cfg), cfg.steps, hooks,
        WaitPolicy(first=cfg.wait_interval, max_wait=cfg.max_wait),
    )
    loop_ref.append(loop)
    loop.restore_hooks()
    return loop


class _StopOnSignal:
    """Before the loop exists there is nothing to save, so a signal just interrupts set-up."""

    def __init__(self) -> None:
        self.loop: TrainLoop | None = None

    def __call__(self, name: str) -> None:
        if self.loop is None:
            raise KeyboardInterrupt
        self.loop.request_stop(name)


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(
        DaemonConfig, argv, prog="python -m trainer [train]", description=__doc__.split("\n\n")[0]
    )
    setup_logging(cfg.log_level)
    stopper = _StopOnSignal()
    install_stop_signals(stopper)
    try:
        loop = build_daemon(cfg)
        stopper.loop = loop
        try:
            loop.run()
        finally:
            loop.source.close()
    except KeyboardInterrupt:
        log.info("stopped before training started")
        return 0
    except (DataWaitTimeout, CheckpointError, SchemaError, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "--device" in str(exc):
            raise ConfigError(str(exc)) from None
        raise
    return 0
