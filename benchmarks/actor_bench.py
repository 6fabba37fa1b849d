"""Actor and evaluator throughput, one process, onnxruntime with 1 intra-op thread.

    python benchmarks/actor_bench.py [--seconds 4] [--sims 16] [--parallel-games 8]

For each game, self-play without a model (random-rollout MCTS) and with the daemon's default
network for that game (MLP 128x3 for tictactoe, ResNet 64x4 for connect4, untrained, exported
like the trainer publishes it), then the evaluator's raw-policy games/s against random.
Numbers are per process: with --workers N the actor scales with the free cores.

The daemon's default periodic evaluation (100 greedy games against random) cost ~0.02 s of
one core for tic-tac-toe and ~0.25 s for Connect Four.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actor_stub.config import ActorConfig  # noqa: E402
from actor_stub.selfplay import SelfPlayWorker  # noqa: E402
from trainer.evaluator import evaluate_model  # noqa: E402
from trainer.games import get_game  # noqa: E402
from trainer.model.contract import LATEST_MODEL_NAME  # noqa: E402
from trainer.replay.writer import ReplayWriter  # noqa: E402


def export_default_model(env_id: str, folder: Path) -> Path:
    import torch

    from trainer.model.networks import build_network
    from trainer.model.onnx_export import export_onnx

    torch.manual_seed(0)
    spec = get_game(env_id).spec
    path = folder / LATEST_MODEL_NAME
    export_onnx(build_network(spec), spec, path, {"step": "1"})
    return path


def bench_actor(env_id: str, model_dir: Path, db: Path, seconds: float, sims: int, parallel: int) -> tuple[float, float, int]:
    cfg = ActorConfig(env_id=env_id, db=db, model_dir=model_dir, sims=sims, parallel_games=parallel, seed=0, log_interval=1e9)
    stop = threading.Event()
    worker = SelfPlayWorker(cfg, 0, 0, stop)
    writer = ReplayWriter(db, get_game(env_id))
    timer = threading.Timer(seconds, stop.set)
    t0 = time.perf_counter()
    timer.start()
    try:
        worker.run(writer)  # finishes the games in flight after `stop`
    finally:
        timer.cancel()
        writer.close()
    dt = time.perf_counter() - t0
    return worker.games_written / dt, worker.plies_written / dt, worker.games_written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="self-play time per configuration")
    ap.add_argument("--sims", type=int, default=16, help="MCTS simulations per move")
    ap.add_argument("--parallel-games", type=int, default=8)
    ap.add_argument("--eval-games", type=int, default=200)
    args = ap.parse_args()
    logging.getLogger("actor_stub").setLevel(logging.WARNING)

    print(f"actor: {args.sims} sims/move, {args.parallel_games} parallel games, 1 process, 1 onnxruntime thread")
    print(f"{'game':<10} {'model':<22} {'games/s':>8} {'plies/s':>9} {'games':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {}
        for env_id in ("tictactoe", "connect4"):
            empty = tmp / f"{env_id}-none"
            with_model = tmp / f"{env_id}-model"
            with_model.mkdir()
            models[env_id] = export_default_model(env_id, with_model)
            net = "MLP 128x3" if env_id == "tictactoe" else "ResNet 64x4"
            for label, folder in (("none (rollouts)", empty), (net, with_model)):
                gps, pps, n = bench_actor(env_id, folder, tmp / f"{env_id}.db", args.seconds, args.sims, args.parallel_games)
                print(f"{env_id:<10} {label:<22} {gps:8.2f} {pps:9.1f} {n:6d}", flush=True)

        print(f"\nevaluator: raw policy (greedy) vs opponent")
        print(f"{'game':<10} {'opponent':<10} {'games':>6} {'games/s':>8}")
        for env_id, opponent, games in (
            ("tictactoe", "random", args.eval_games),
            ("tictactoe", "perfect", args.eval_games),
            ("connect4", "random", args.eval_games // 2),
        ):
            r = evaluate_model(models[env_id], env_id, opponent, games, seed=0)
            print(f"{env_id:<10} {opponent:<10} {games:6d} {games / r.elapsed_s:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
