"""Actor and evaluator throughput, one process, onnxruntime with 1 intra-op thread.

    python benchmarks/actor_bench.py [--seconds 4] [--sims 16] [--parallel-games 8] [--c4-model trained.onnx]

For each game, self-play without a model (random-rollout MCTS) and with the daemon's default
network for that game (MLP 128x3 for tictactoe, ResNet 64x4 for connect4, untrained, exported
like the trainer publishes it, or --c4-model), then the evaluator's raw-policy games/s against
random. Numbers are per process: with --workers N the actor scales with the free cores.

With a model, each row also shows the positions the network evaluated per second and the
share of the wall time spent in the network. The Connect Four model is then played side by
side under the old actor settings (no evaluation cache, no subtree reuse) and the actor's
current defaults, and with subtree reuse on, in the same run.

The daemon's default periodic evaluation (100 greedy games against random) cost ~0.02 s of
one core for tic-tac-toe and ~0.25 s for Connect Four.
"""

from __future__ import annotations

import argparse
import logging
import shutil
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
from trainer.onnx_policy import OnnxPolicy  # noqa: E402
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


class NetworkTimer:
    """Counts the positions OnnxPolicy.evaluate is given and the time it takes."""

    def __init__(self):
        self.positions = 0
        self.seconds = 0.0
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

        OnnxPolicy.evaluate = timed
        return self

    def __exit__(self, *exc) -> None:
        OnnxPolicy.evaluate = self._original


def bench_actor(
    env_id: str, model_dir: Path, db: Path, seconds: float, sims: int, parallel: int, **settings
) -> tuple[float, float, int, float, float]:
    """(games/s, plies/s, games, network positions/s, share of time in the network)."""
    cfg = ActorConfig(
        env_id=env_id,
        db=db,
        model_dir=model_dir,
        sims=sims,
        parallel_games=parallel,
        seed=0,
        log_interval=1e9,
        **settings,
    )
    stop = threading.Event()
    worker = SelfPlayWorker(cfg, 0, 0, stop)
    writer = ReplayWriter(db, get_game(env_id))
    timer = threading.Timer(seconds, stop.set)
    t0 = time.perf_counter()
    timer.start()
    try:
        with NetworkTimer() as net:
            worker.run(writer)  # finishes the games in flight after `stop`
    finally:
        timer.cancel()
        writer.close()
    dt = time.perf_counter() - t0
    return (
        worker.games_written / dt,
        worker.plies_written / dt,
        worker.games_written,
        net.positions / dt,
        net.seconds / dt,
    )


def _row(env_id: str, label: str, row: tuple[float, float, int, float, float]) -> str:
    gps, pps, n, eps, share = row
    return f"{env_id:<10} {label:<22} {gps:8.2f} {pps:9.1f} {n:6d} {eps:8.0f} {100 * share:8.0f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="self-play time per configuration")
    ap.add_argument("--sims", type=int, default=16, help="MCTS simulations per move")
    ap.add_argument("--parallel-games", type=int, default=8)
    ap.add_argument("--eval-games", type=int, default=200)
    ap.add_argument(
        "--c4-model", type=Path, default=None, help="a trained Connect Four model instead of an untrained one"
    )
    args = ap.parse_args()
    logging.getLogger("actor_stub").setLevel(logging.WARNING)

    print(
        f"actor: {args.sims} sims/move, {args.parallel_games} parallel games, 1 process, 1 onnxruntime thread"
    )
    header = f"{'game':<10} {'model':<22} {'games/s':>8} {'plies/s':>9} {'games':>6} {'evals/s':>8} {'net share':>9}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {}
        for env_id in ("tictactoe", "connect4"):
            empty = tmp / f"{env_id}-none"
            with_model = tmp / f"{env_id}-model"
            with_model.mkdir()
            if env_id == "connect4" and args.c4_model is not None:
                models[env_id] = with_model / LATEST_MODEL_NAME
                shutil.copyfile(args.c4_model, models[env_id])
                net = "given model"
            else:
                models[env_id] = export_default_model(env_id, with_model)
                net = "MLP 128x3" if env_id == "tictactoe" else "ResNet 64x4"
            for label, folder in (("none (rollouts)", empty), (net, with_model)):
                row = bench_actor(
                    env_id, folder, tmp / f"{env_id}.db", args.seconds, args.sims, args.parallel_games
                )
                print(_row(env_id, label, row), flush=True)

        print(f"\nconnect4 side by side, one model, {args.sims} sims/move")
        print(header)
        for label, settings in (
            ("old (no cache/reuse)", dict(eval_cache=0, reuse_tree=False)),
            ("defaults", {}),
            ("defaults + reuse", dict(reuse_tree=True)),
        ):
            row = bench_actor(
                "connect4",
                models["connect4"].parent,
                tmp / "side.db",
                args.seconds,
                args.sims,
                args.parallel_games,
                **settings,
            )
            print(_row("connect4", label, row), flush=True)

        print("\nevaluator: raw policy (greedy) vs opponent")
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
