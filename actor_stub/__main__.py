"""`python -m actor_stub`: a Python self-play actor writing whole games to the replay DB.

It plays `--parallel-games` games at once per process with batched MCTS (random-rollout
leaves until a model is published, then the model's priors and values), hot-reloads
`<model-dir>/latest.onnx` between games, and writes every finished game in one transaction
through the shared `ReplayWriter`, each row tagged with the model step that played it.

Stopping: the first SIGINT/SIGTERM finishes the games in flight and exits; a second one
exits at once, dropping them. Either way no half game is ever in the DB: a game is one
transaction, and SQLite rolls back an interrupted one.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys

from actor_stub.config import ActorConfig
from actor_stub.process import child_main, install_signals, run_worker_or_explain, setup_logging
from trainer.config.loader import load_config
from trainer.runtime import StopFlag

log = logging.getLogger("actor_stub")


def split_episodes(total: int, workers: int) -> list[int]:
    if total == 0:
        return [0] * workers
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(
        ActorConfig,
        argv,
        prog="python -m actor_stub",
        description=__doc__.split("\n\n")[0],
        env_prefix="ACTOR_",
    )
    setup_logging(cfg.log_level, cfg.log_format)
    from trainer.games import get_game
    from trainer.replay.backend import open_replay_writer
    from trainer.replay.schema import SchemaError
    from trainer.replay.writer import ReplayWriteError

    try:
        game = get_game(cfg.env_id)
    except ValueError as e:
        log.error("%s", e)
        return 2
    try:
        # Opened here once, so a DB that cannot be written is one error before any worker starts.
        open_replay_writer(cfg.db, game).close()
    except (ReplayWriteError, SchemaError) as exc:  # SchemaError: also a refused server login
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if cfg.workers == 1:
        stop = StopFlag()
        install_signals(stop, (signal.SIGINT, signal.SIGTERM))
        return run_worker_or_explain(cfg, cfg.episodes, cfg.seed, 0, stop)

    ctx = mp.get_context("spawn")  # no forked onnxruntime or watchdog threads
    procs = []
    for i, n in enumerate(split_episodes(cfg.episodes, cfg.workers)):
        if cfg.episodes and n == 0:
            continue
        seed = None if cfg.seed is None else cfg.seed + i
        p = ctx.Process(
            target=child_main, args=(cfg.model_dump_json(), n, seed, i, os.getpid()), name=f"actor-{i}"
        )
        p.start()
        procs.append(p)
    signals_seen = 0

    def forward(signum, frame):
        nonlocal signals_seen
        signals_seen += 1
        log.info(
            "%s: %s workers", signal.Signals(signum).name, "stopping" if signals_seen == 1 else "killing"
        )
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = []
    for p in procs:
        p.join()
        codes.append(p.exitcode)
    if 2 in codes:
        return 2  # a worker could not write the DB and said why
    return 1 if signals_seen < 2 and any(c not in (0, None) for c in codes) else 0


if __name__ == "__main__":
    sys.exit(main())
