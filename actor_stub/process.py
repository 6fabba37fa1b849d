"""Process plumbing of the actor: logging, stop signals, one worker's life.

Kept out of `__main__` so `multiprocessing`'s spawn start method can import `child_main`.
"""

from __future__ import annotations

import logging
import signal
import sys

from actor_stub.config import ActorConfig
from trainer.parent_death import die_with_parent
from trainer.runtime import StopFlag, install_stop_signals, setup_logging

log = logging.getLogger("actor_stub")


def install_signals(stop: StopFlag, signals: tuple[int, ...]) -> None:
    install_stop_signals(
        lambda name: stop.set(),
        signals,
        first_message="finishing the games in flight",
        second_message="exiting now, dropping unfinished games",
        logger="actor_stub",
    )


def run_worker(cfg: ActorConfig, episodes: int, seed: int | None, index: int, stop: StopFlag) -> None:
    from actor_stub.selfplay import SelfPlayWorker
    from trainer.games import get_game
    from trainer.replay.backend import open_replay_writer

    writer = open_replay_writer(cfg.db, get_game(cfg.env_id), with_model_step=True)
    try:
        worker = SelfPlayWorker(cfg, episodes, seed, stop, worker_index=index)
        if cfg.metrics_port:
            from trainer.metrics.exporter import serve_metrics

            serve_metrics(worker.metrics.registry, cfg.metrics_host, cfg.metrics_port + index)
        worker.run(writer)
    finally:
        writer.close()


def run_worker_or_explain(
    cfg: ActorConfig, episodes: int, seed: int | None, index: int, stop: StopFlag
) -> int:
    """run_worker, with a DB that cannot be written reported as one `error:` line: exit code 2."""
    from trainer.replay.schema import SchemaError
    from trainer.replay.writer import ReplayWriteError

    try:
        run_worker(cfg, episodes, seed, index, stop)
    except (ReplayWriteError, SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def child_main(cfg_json: str, episodes: int, seed: int | None, index: int, parent: int) -> None:
    stop = StopFlag()
    # A parent killed outright cannot forward a stop: the kernel's parent-death signal then
    # asks for one. Not SIGTERM: it may come once per thread of the parent, and a second
    # SIGTERM means "drop the games in flight".
    signal.signal(signal.SIGUSR1, lambda signum, frame: stop.set())
    die_with_parent(parent, signal.SIGUSR1)
    cfg = ActorConfig.model_validate_json(cfg_json)
    setup_logging(cfg.log_level, cfg.log_format)
    # A terminal's Ctrl-C reaches the whole process group; the parent forwards it as SIGTERM,
    # so children ignore SIGINT or they would count it twice and drop their games.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    install_signals(stop, (signal.SIGTERM,))
    sys.exit(run_worker_or_explain(cfg, episodes, seed, index, stop))
