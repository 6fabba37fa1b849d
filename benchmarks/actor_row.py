"""One actor throughput measurement: self-play with one model for a few seconds, one process.

`benchmarks/actor_bench.py` calls `bench_actor` for its rows. Run as a script, it measures
the actor of another source tree (`--code`, e.g. an older commit extracted by actor_bench's
`--baseline`) with that tree's own defaults and prints the row as JSON: the project's modules
are imported inside the functions, so they come from whichever tree is first on sys.path.

    python benchmarks/actor_row.py --code /tmp/old --env-id connect4 --model-dir M --db R --seconds 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

# (games/s, plies/s, games, network positions/s, share of time in the network, plies per CPU s)
Row = tuple[float, float, int, float, float, float]


class NetworkTimer:
    """Counts the positions OnnxPolicy.evaluate is given and the time it takes."""

    def __init__(self):
        from trainer.onnx_policy import OnnxPolicy

        self.positions = 0
        self.seconds = 0.0
        self._cls = OnnxPolicy
        self._original = OnnxPolicy.evaluate

    def __enter__(self) -> NetworkTimer:
        timer, original = self, self._original

        def timed(policy, obs, masks):
            t0 = time.perf_counter()
            try:
                return original(policy, obs, masks)
            finally:
                timer.seconds += time.perf_counter() - t0
                timer.positions += len(obs)

        self._cls.evaluate = timed
        return self

    def __exit__(self, *exc) -> None:
        self._cls.evaluate = self._original


def bench_actor(env_id: str, model_dir: Path, db: Path, seconds: float, **settings: Any) -> Row:
    """(games/s, plies/s, games, network positions/s, share of time in the network, plies per
    CPU second of the process), all counted over the first `seconds`: plies are moves made,
    so the games still in flight at the end (more of them with more parallel games) neither
    count nor cost."""
    from actor_stub.config import ActorConfig
    from actor_stub.selfplay import SelfPlayWorker
    from trainer.games import get_game
    from trainer.replay.writer import ReplayWriter

    cfg = ActorConfig(env_id=env_id, db=db, model_dir=model_dir, seed=0, log_interval=1e9, **settings)
    stop = threading.Event()
    worker = SelfPlayWorker(cfg, 0, 0, stop)
    writer = ReplayWriter(db, get_game(env_id))
    choose_moves = worker._choose_moves
    plies = 0
    # At the stop: wall time, CPU time, games, positions, net seconds.
    window: tuple[float, float, int, int, float] | None = None

    def counted(games):
        nonlocal plies, window
        if stop.is_set() and window is None:
            window = (
                time.perf_counter() - t0,
                time.process_time() - cpu0,
                worker.games_written,
                net.positions,
                net.seconds,
            )
        if window is None:
            plies += len(games)
        return choose_moves(games)

    worker._choose_moves = counted
    timer = threading.Timer(seconds, stop.set)
    try:
        with NetworkTimer() as net:
            t0, cpu0 = time.perf_counter(), time.process_time()
            timer.start()
            worker.run(writer)  # finishes the games in flight after `stop`
    finally:
        timer.cancel()
        writer.close()
    assert window is not None, "the stop came after the last move"
    dt, cpu, games, positions, net_seconds = window
    return games / dt, plies / dt, games, positions / dt, net_seconds / dt, plies / max(cpu, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--code", type=Path, required=True, help="source tree whose actor_stub and trainer to measure"
    )
    ap.add_argument("--env-id", required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    import actor_stub

    if Path(actor_stub.__file__).resolve().parents[1] != args.code.resolve():
        raise SystemExit(f"error: actor_stub came from {actor_stub.__file__}, not from --code {args.code}")
    logging.getLogger("actor_stub").setLevel(logging.WARNING)
    print(json.dumps(bench_actor(args.env_id, args.model_dir, args.db, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
