"""Actor and evaluator throughput, one process, onnxruntime with 1 intra-op thread.

    python benchmarks/actor_bench.py [--seconds 4] [--sims 16] [--parallel-games 8] [--c4-model trained.onnx]
    python benchmarks/actor_bench.py --only defaults --try sims=16,search=gumbel --try reuse_tree=true
    python benchmarks/actor_bench.py --only defaults --c4-model trained.onnx --seconds 10 --rounds 3

For each game, self-play without a model (random-rollout MCTS) and with the daemon's default
network for that game (MLP 128x3 for tictactoe, ResNet 64x4 for connect4, untrained, exported
like the trainer publishes it, or --c4-model), then the evaluator's raw-policy games/s against
random. Numbers are per process: with --workers N the actor scales with the free cores.

With a model, each row also shows the positions the network evaluated per second and the
share of the wall time spent in the network. Then, per game and with the same model, side by
side in the same run: the actor of an older commit at that commit's own defaults
(`--baseline`, by default the actor before the throughput work: its code is taken from git
and runs in a process of its own), the actor's settings as they were before the per-game
defaults (`TODAY`, spelled out here so the comparison survives a change of the defaults) on
today's code, the actor's defaults now, and, for Connect Four, any `--try` settings. The
rows run in turn for `--rounds` rounds (each shows its best), with the ratios to the first
row of plies/s and of plies per CPU second of the process. Plies are moves made within
`--seconds`. On a quiet machine the two ratios agree; on a busy one the CPU-time ratio is
the steadier (the wall-time one depends on the share of the cores a process gets).
`benchmarks/actor_strength.py` plays such settings against each other for strength.

The daemon's default periodic evaluation (100 greedy games against random) cost ~0.02 s of
one core for tic-tac-toe and ~0.25 s for Connect Four.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actor_row import Row, bench_actor  # noqa: E402

from actor_stub.config import ActorConfig  # noqa: E402
from trainer.evaluator import evaluate_model  # noqa: E402
from trainer.games import get_game  # noqa: E402
from trainer.model.contract import LATEST_MODEL_NAME  # noqa: E402

# The actor's code before the throughput work of issue 15 (no evaluation cache, no subtree
# reuse, numpy selection): the "today" that issue measured against.
ISSUE_BASELINE = "b669356^"

# The actor's settings on main before the per-game defaults (both games played with these).
TODAY: dict[str, object] = dict(
    sims=50,
    search="puct",
    reuse_tree=False,
    eval_cache=100_000,
    int8=False,
    parallel_games=8,
    c_puct=1.5,
    dirichlet_alpha=0.3,
    dirichlet_weight=0.25,
    temperature_plies=4,
)


def parse_settings(text: str) -> dict[str, object]:
    """`sims=16,search=gumbel` -> ActorConfig fields over TODAY (ActorConfig validates them)."""
    out = dict(TODAY)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def settings_label(settings: dict[str, object]) -> str:
    """The settings that differ from TODAY, or "today"."""
    return ",".join(f"{k}={v}" for k, v in settings.items() if str(TODAY.get(k)) != str(v)) or "today"


def default_settings(env_id: str) -> dict[str, object]:
    """The actor's defaults now for `env_id`, in TODAY's fields."""
    cfg = ActorConfig(env_id=env_id)
    return {k: getattr(cfg, k) for k in TODAY}


def export_default_model(env_id: str, folder: Path) -> Path:
    import torch

    from trainer.model.networks import build_network
    from trainer.model.onnx_export import export_onnx

    torch.manual_seed(0)
    spec = get_game(env_id).spec
    path = folder / LATEST_MODEL_NAME
    export_onnx(build_network(spec), spec, path, {"step": "1"})
    return path


def _row(env_id: str, label: str, row: Row) -> str:
    gps, pps, n, eps, share, per_cpu = row
    return f"{env_id:<10} {label:<22} {gps:8.2f} {pps:9.1f} {n:6d} {eps:8.0f} {100 * share:8.0f}% {per_cpu:11.1f}"


def extract_tree(ref: str, dest: Path) -> Path:
    """The actor_stub and trainer packages of commit `ref` of this repository, in `dest`."""
    repo = Path(__file__).resolve().parents[1]
    tar = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", ref, "actor_stub", "trainer"],
        capture_output=True,
        check=False,
    )
    if tar.returncode != 0:
        raise RuntimeError(tar.stderr.decode(errors="replace").strip() or f"git archive {ref} failed")
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return dest


class BaselineFailed(RuntimeError):
    """The other tree's actor failed in its own process (its last error line)."""


def bench_tree(code: Path, env_id: str, model_dir: Path, db: Path, seconds: float) -> Row:
    """`bench_actor` on the actor of another source tree, with that tree's own defaults, in a
    process of its own (actor_row.py) so none of this tree's modules are loaded there."""
    script = Path(__file__).with_name("actor_row.py")
    out = subprocess.run(
        [sys.executable, str(script), "--code", str(code), "--env-id", env_id]
        + ["--model-dir", str(model_dir), "--db", str(db), "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "actor_row.py failed"
        raise BaselineFailed(last.removeprefix("error: "))
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))  # type: ignore[return-value]


def compare_defaults(
    env_id: str,
    model_dir: Path,
    db: Path,
    seconds: float,
    tries: list[str],
    rounds: int,
    baseline: tuple[str, Path] | None = None,
) -> None:
    """TODAY vs the defaults now (and `tries`) with one model, side by side: the rows run in
    turn `rounds` times and each shows its best round (the least disturbed by other load).
    With `baseline` (a label and a source tree) its actor, at its own defaults, comes first
    and the ratios are to it."""
    rows: list[tuple[str, str, Callable[[], Row]]] = []
    if baseline is not None:
        label, code = baseline
        rows.append((label, "its defaults", lambda: bench_tree(code, env_id, model_dir, db, seconds)))
    settings_rows = [("today's defaults", dict(TODAY)), ("defaults now", default_settings(env_id))]
    settings_rows += [
        (settings_label(parse_settings(t)), parse_settings(t)) for t in tries if env_id == "connect4"
    ]
    for label, settings in settings_rows:
        rows.append(
            (
                label,
                settings_label(settings),
                lambda s=settings: bench_actor(env_id, model_dir, db, seconds, **s),
            )
        )
    best: list[Row | None] = [None] * len(rows)
    for _ in range(rounds):
        for i, (_, _, measure) in enumerate(rows):
            row = measure()
            if best[i] is None or row[5] > best[i][5]:
                best[i] = row
    base = best[0]
    assert base is not None
    for (label, described, _), row in zip(rows, best):
        assert row is not None
        ratios = f"{row[1] / base[1]:8.2f}x {row[5] / base[5]:5.2f}x"
        print(f"{_row(env_id, label[:22], row)} {ratios}  {described}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="self-play time per configuration")
    ap.add_argument("--sims", type=int, default=16, help="MCTS simulations per move")
    ap.add_argument("--parallel-games", type=int, default=8)
    ap.add_argument("--eval-games", type=int, default=200)
    ap.add_argument(
        "--c4-model", type=Path, default=None, help="a trained Connect Four model instead of an untrained one"
    )
    ap.add_argument(
        "--try",
        dest="tries",
        action="append",
        default=[],
        help="more Connect Four actor settings to compare with today's, e.g. sims=16,search=gumbel (repeatable)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="before/after: rounds of every row, best shown")
    ap.add_argument(
        "--baseline",
        default=ISSUE_BASELINE,
        help="git commit whose actor, at its own defaults, heads the before/after rows and sets the ratios "
        f"(default {ISSUE_BASELINE}: the actor before the throughput work); 'none' to leave it out",
    )
    ap.add_argument("--only", choices=["throughput", "defaults", "evaluator"], default=None)
    args = ap.parse_args()
    logging.getLogger("actor_stub").setLevel(logging.WARNING)
    header = (
        f"{'game':<10} {'model':<22} {'games/s':>8} {'plies/s':>9} {'games':>6} {'evals/s':>8} "
        f"{'net share':>9} {'plies/cpu-s':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models, nets = {}, {}
        for env_id in ("tictactoe", "connect4"):
            with_model = tmp / f"{env_id}-model"
            with_model.mkdir()
            if env_id == "connect4" and args.c4_model is not None:
                models[env_id] = with_model / LATEST_MODEL_NAME
                shutil.copyfile(args.c4_model, models[env_id])
                nets[env_id] = "given model"
            else:
                models[env_id] = export_default_model(env_id, with_model)
                nets[env_id] = "MLP 128x3" if env_id == "tictactoe" else "ResNet 64x4"

        if args.only in (None, "throughput"):
            print(
                f"actor: {args.sims} sims/move, {args.parallel_games} parallel games, 1 process, 1 onnxruntime thread"
            )
            print(header)
            for env_id in ("tictactoe", "connect4"):
                for label, folder in (
                    ("none (rollouts)", tmp / f"{env_id}-none"),
                    (nets[env_id], models[env_id].parent),
                ):
                    row = bench_actor(
                        env_id,
                        folder,
                        tmp / f"{env_id}.db",
                        args.seconds,
                        sims=args.sims,
                        parallel_games=args.parallel_games,
                    )
                    print(_row(env_id, label, row), flush=True)

        if args.only in (None, "defaults"):
            baseline = None
            if args.baseline != "none":
                try:
                    baseline = (f"actor at {args.baseline}", extract_tree(args.baseline, tmp / "baseline"))
                except (RuntimeError, OSError) as e:
                    print(f"no baseline row: {args.baseline}: {e}")
            base_label = "vs base" if baseline else "vs today"
            print("\nbefore/after: today's defaults vs the defaults now, one model per game, side by side")
            print(f"{header} {base_label:>9} {'(cpu)':>6}  settings")
            for env_id in ("tictactoe", "connect4"):
                try:
                    compare_defaults(
                        env_id,
                        models[env_id].parent,
                        tmp / "side.db",
                        args.seconds,
                        args.tries,
                        args.rounds,
                        baseline,
                    )
                except BaselineFailed as e:
                    print(f"error: the actor at {args.baseline}: {e}", file=sys.stderr)
                    return 2

        if args.only not in (None, "evaluator"):
            return 0
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
