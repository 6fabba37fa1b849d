"""Updates per second of every offline mode beside d3rlpy's, at batch 256, on one thread.

    python benchmarks/offline_bench.py [--updates 50] [--rounds 10] [--clock wall|cpu]
        [--no-compile] [--moves 100000] [--threads 1] [--games tictactoe,connect4] [--modes ...] [--device cpu]

Side by side in one process (always): 100k plies of Connect Four between two epsilon-greedy
tactical players (win if possible, else block, else random; epsilon 0.3), a fast stand-in
for MCTS/epsilon play of the same shape, with OpenSpiel's 126-float observations (mover's
stones, opponent's, empty) and explicit legal masks. Ours: imitation, bc, iql, cql on the
MLP 128x3 (`--net mlp`), iql and cql with their default twin critics and with `--critics 1`,
as the commands hold the data (OfflineDataset + ShuffledSource); a
timed update is `source.next_batch()` + `objective.train_step(batch, lr)`, what the shared
TrainLoop does per step minus the hooks; each mode again with `--compile` (torch.compile of
the forward and backward passes, its compile time printed) unless `--no-compile`. d3rlpy 2.8.1 (`pip install -r
requirements-bench.txt`; never imported by trainer/), when installed: DiscreteBC and
DiscreteCQL at their default network (256x2) and at our MLP's trunk (128x3), timed on
`algo.update(batch)` (its numpy -> torch conversion included) over batches sampled before
the clock starts. The contenders take turns in blocks of `--updates`; the median block is
shown with its ratio to d3rlpy at its default network (BC for imitation/bc, CQL for
iql/cql). `--clock cpu` times this thread's CPU time, for a machine that is not quiet.

`--games` adds the per-game table: uniformly random games of each game (trainer.games) with
the daemon's default networks (MLP 128x3 for tic-tac-toe, ResNet 64x4 for Connect Four).

The end-to-end measurements use the CLI (numbers in the README's table):

    # imitation on 100,000 moves of a deterministic teacher (tic-tac-toe): 97.1% validation
    # accuracy after epoch 1, 100% after epoch 3, 20 epochs in 36 s
    python benchmarks/offline_bench.py --write-teacher-data data/teacher100k.h5 --teacher-moves 100000
    python -m trainer imitation --data data/teacher100k.h5 --model-dir data/imit/models --epochs 20

    # BC vs IQL vs CQL on mixed-quality Connect Four data (two generator processes of 1500
    # games each, seeds 1 and 2, concatenated: 3000 games, 51k moves, ~3 min)
    python -m actor_stub.generate --env-id connect4 --games 1500 --teacher mcts:50 --epsilon 0.3 --seed 1 --output data/c4mix_1.jsonl
    python -m trainer split --data data/c4mix.jsonl --val-fraction 0.1 --seed 0 --out-train data/tr.jsonl --out-val data/va.jsonl
    python -m trainer bc  --data data/tr.jsonl --val-data data/va.jsonl --net mlp --epochs 10 --model-dir data/c4bc/models
    python -m trainer iql --data data/tr.jsonl --net mlp --steps 3000 --init-from data/c4bc/checkpoints/best.pt --model-dir data/c4iql/models
    python -m trainer cql --data data/tr.jsonl --net mlp --steps 3000 --init-from data/c4bc/checkpoints/best.pt --model-dir data/c4cql/models
    python -m trainer.evaluator --model data/c4bc/models/latest.onnx --opponent mcts:50 --games 100 --seed 1
    # the behaviour policy that made the data, scored the same way (seeds 7 and 8, pooled)
    python -m trainer.evaluator --player mcts:50+epsilon:0.3 --env-id connect4 --opponent mcts:50 --games 200 --seed 7
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.games import get_game  # noqa: E402
from trainer.model.networks import build_network  # noqa: E402
from trainer.objectives.cql import CQLObjective  # noqa: E402
from trainer.objectives.iql import IQLObjective  # noqa: E402
from trainer.objectives.policy_value import PolicyValueObjective  # noqa: E402
from trainer.search.players import tictactoe_rule_move  # noqa: E402
from trainer.sources.offline_data import RawData, build_dataset  # noqa: E402
from trainer.sources.offline_source import ShuffledSource  # noqa: E402


def random_games(env_id: str, moves: int, seed: int = 0) -> RawData:
    """At least `moves` plies of uniformly random play, as the arrays an HDF5 file holds."""
    game, rng = get_game(env_id), np.random.default_rng(seed)
    obs, actions, rewards, dones = [], [], [], []
    while len(obs) < moves:
        state = game.initial_state()
        while not state.is_terminal:
            a = int(rng.choice(np.flatnonzero(game.legal_mask(state))))
            after = game.apply(state, a)
            obs.append(game.encode(state))
            actions.append(a)
            rewards.append(game.reward_for_mover(state, after))
            dones.append(after.is_terminal)
            state = after
    return RawData(
        obs=np.stack(obs),
        actions=np.asarray(actions),
        rewards=np.asarray(rewards),
        dones=np.asarray(dones),
        attrs={"env_id": env_id},
    )


def write_teacher_data(path: Path, moves: int, seed: int = 0) -> None:
    """Tic-tac-toe games: a random opening of 0-3 plies (not recorded), then the teacher;
    only teacher moves are written (states, actions, legal_masks, outcomes)."""
    import h5py

    game, rng = get_game("tictactoe"), np.random.default_rng(seed)
    states, actions, legal, outcomes, ids = [], [], [], [], []
    episode = 0
    while len(states) < moves:
        state, rows = game.initial_state(), []
        opening = int(rng.integers(0, 4))
        while not state.is_terminal:
            if state.ply < opening:
                a = int(rng.choice(np.flatnonzero(game.legal_mask(state))))
            else:
                a = tictactoe_rule_move(state.board, state.to_move)
                rows.append((game.encode(state), a, game.legal_mask(state), state.to_move))
            state = game.apply(state, a)
        for o, a, m, mover in rows:
            states.append(o)
            actions.append(a)
            legal.append(m)
            outcomes.append(0.0 if state.winner == 3 else (1.0 if state.winner == mover else -1.0))
            ids.append(episode)
        episode += 1
    with h5py.File(path, "w") as f:
        f.create_dataset("states", data=np.stack(states[:moves]).astype(np.float32))
        f.create_dataset("actions", data=np.asarray(actions[:moves], dtype=np.int64))
        f.create_dataset("legal_masks", data=np.stack(legal[:moves]))
        f.create_dataset("outcomes", data=np.asarray(outcomes[:moves], dtype=np.float32))
        f.create_dataset("episode_ids", data=np.asarray(ids[:moves], dtype=np.int64))
        f.attrs["env_id"] = "tictactoe"
    print(f"wrote {moves} teacher moves ({episode} games) to {path}")


def make_objective(mode: str, spec, device, net: str = "auto", critics: int = 2):
    make = lambda: build_network(spec, net).to(device)  # noqa: E731  the daemon's default nets
    if mode == "imitation":
        return PolicyValueObjective(make(), name=mode, lr=1e-3, optimizer="adam")
    if mode == "bc":
        return PolicyValueObjective(
            make(),
            name=mode,
            lr=1e-3,
            optimizer="adamw",
            weight_decay=1e-4,
            grad_clip=1.0,
            label_smoothing=0.05,
        )
    common = dict(
        lr=1e-3, weight_decay=1e-4, grad_clip=1.0, gamma=1.0, target_update_rate=0.005, critics=critics
    )
    if mode == "iql":
        return IQLObjective(make(), make, expectile=0.7, beta=3.0, max_weight=100.0, **common)
    return CQLObjective(make(), make, alpha=1.0, policy_temperature=0.1, **common)


def bench(env_id: str, mode: str, updates: int, batch: int, device: torch.device) -> float:
    data = build_dataset(random_games(env_id, 4 * batch), env_id, transitions=mode in ("iql", "cql")).to(
        device
    )
    rows = torch.arange(len(data), device=device)
    if data.has_next is not None:
        rows = rows[data.has_next]
    source = ShuffledSource(data, rows, batch, seed=0)
    obj = make_objective(mode, data.spec, device)
    for _ in range(3):  # warm-up (allocator, first-call paths)
        obj.train_step(source.next_batch(), 1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(updates):
        obj.train_step(source.next_batch(), 1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return updates / (time.perf_counter() - t0)


# --- side by side with d3rlpy ----------------------------------------------------------------


def openspiel_planes(board: tuple[int, ...], mover: int) -> np.ndarray:
    """OpenSpiel's Connect Four observation: the mover's stones, the opponent's, the empty
    cells, as three 6x7 planes (126 floats)."""
    b = np.asarray(board)
    return np.concatenate([b == mover, b == 3 - mover, b == 0]).astype(np.float32)


def tactical_move(game, state, legal: np.ndarray, rng: np.random.Generator) -> int:
    """A one-ply teacher: win if it can, else block the opponent's win, else a random move."""
    moves = np.flatnonzero(legal)
    for a in moves:
        if game.apply(state, int(a)).winner == state.to_move:
            return int(a)
    blocker = replace(state, to_move=3 - state.to_move)
    for a in moves:
        if game.apply(blocker, int(a)).winner == blocker.to_move:
            return int(a)
    return int(rng.choice(moves))


def mixed_connect4(moves: int, epsilon: float = 0.3, seed: int = 0) -> RawData:
    """At least `moves` plies of Connect Four between two epsilon-greedy tactical players,
    with OpenSpiel's 126-float observations and explicit legal masks (so the trainer sees
    generic data: its default network is the MLP, as for d3rlpy)."""
    game, rng = get_game("connect4"), np.random.default_rng(seed)
    obs, legal, actions, rewards, dones, episodes = [], [], [], [], [], []
    episode = 0
    while len(obs) < moves:
        state = game.initial_state()
        while not state.is_terminal:
            mask = game.legal_mask(state)
            if rng.random() < epsilon:
                a = int(rng.choice(np.flatnonzero(mask)))
            else:
                a = tactical_move(game, state, mask, rng)
            after = game.apply(state, a)
            obs.append(openspiel_planes(state.board, state.to_move))
            legal.append(mask)
            actions.append(a)
            rewards.append(game.reward_for_mover(state, after))
            dones.append(after.is_terminal)
            episodes.append(episode)
            state = after
        episode += 1
    return RawData(
        obs=np.stack(obs),
        actions=np.asarray(actions),
        legal=np.stack(legal),
        rewards=np.asarray(rewards, dtype=np.float32),
        dones=np.asarray(dones),
        episode_ids=np.asarray(episodes),
        attrs={"player_count": 2},
    )


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def timed(updates_by_name: dict, updates: int, rounds: int, clock: str) -> dict[str, float]:
    """Median updates/s of each contender over `rounds` blocks of `updates` calls, the
    contenders taking turns block by block, so that a change in the machine's load falls
    on all of them alike. `clock` "cpu" counts this thread's CPU time (all the work of a
    1-thread run), which other processes on a busy machine barely disturb."""
    now = CLOCKS[clock]
    for update in updates_by_name.values():
        for _ in range(5):  # warm-up (allocator, first-call paths)
            update()
    rates: dict[str, list[float]] = {name: [] for name in updates_by_name}
    for _ in range(rounds):
        for name, update in updates_by_name.items():
            t0 = now()
            for _ in range(updates):
                update()
            rates[name].append(updates / (now() - t0))
    return {name: float(np.median(r)) for name, r in rates.items()}


def ours(mode: str, data, batch: int, seed: int = 0, compiled: bool = False, critics: int = 2):
    """One update of ours as the loop does it: next_batch() + train_step(batch, lr); with
    `compiled`, after `objective.compile()` (--compile) and a first update that compiles."""
    rows = torch.arange(len(data))
    if mode in ("iql", "cql"):
        rows = rows[data.has_next]
    source = ShuffledSource(data, rows, batch, seed=seed)
    obj = make_objective(mode, data.spec, torch.device("cpu"), "mlp", critics)
    update = lambda: obj.train_step(source.next_batch(), 1e-3)  # noqa: E731
    if compiled:
        obj.compile()
        t0 = time.perf_counter()
        update()
        print(
            f"ours {mode} (critics {critics}) compiled in {time.perf_counter() - t0:.1f} s (wall)", flush=True
        )
    return update


def d3rlpy_update(kind: str, raw: RawData, batch: int, hidden: list[int] | None, presampled: int = 64):
    """One d3rlpy `update(batch)` (its numpy -> torch conversion included) on batches drawn
    beforehand: d3rlpy samples in Python per transition, which would dominate otherwise."""
    import d3rlpy
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    dataset = d3rlpy.dataset.MDPDataset(
        observations=raw.obs,
        actions=raw.actions.astype(np.int64),
        rewards=raw.rewards.astype(np.float32),
        terminals=raw.dones.astype(np.float32),
        action_space=d3rlpy.constants.ActionSpace.DISCRETE,
        action_size=int(raw.legal.shape[1]),
    )
    extra = (
        {} if hidden is None else {"encoder_factory": d3rlpy.models.VectorEncoderFactory(hidden_units=hidden)}
    )
    config = d3rlpy.algos.DiscreteBCConfig if kind == "bc" else d3rlpy.algos.DiscreteCQLConfig
    algo = config(batch_size=batch, **extra).create(device="cpu:0")
    algo.build_with_dataset(dataset)
    batches = [dataset.sample_transition_batch(batch) for _ in range(presampled)]
    counter = iter(range(10**12))
    return lambda: algo.update(batches[next(counter) % presampled])


# --- the matrix-multiply floor ---------------------------------------------------------------

MATMULS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
}


class MatmulRecorder(TorchDispatchMode):
    """Records every matrix multiply one update runs (forward and backward), with operands of
    the same shapes, strides and dtypes, to replay them alone."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMULS:
            self.calls.append((func, tuple(_operand_like(a) for a in args), dict(kwargs)))
        return func(*args, **kwargs)


def _operand_like(x):
    if not isinstance(x, torch.Tensor):
        return x
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype).normal_()


def matmul_floor(update, clock: str, repeats: int = 200) -> tuple[float, int]:
    """(updates/s if an update were only its matrix multiplies, one ATen call each, and the
    multiply-adds per update): no implementation of the same arithmetic on this machine
    can run faster than that."""
    recorder = MatmulRecorder()
    with recorder:
        update()
    calls = recorder.calls
    macs = sum(_macs(func, args) for func, args, _ in calls)
    with torch.no_grad():
        for _ in range(10):
            for func, args, kwargs in calls:
                func(*args, **kwargs)
        now = CLOCKS[clock]
        t0 = now()
        for _ in range(repeats):
            for func, args, kwargs in calls:
                func(*args, **kwargs)
        return repeats / (now() - t0), macs


def _macs(func, args) -> int:
    a, b = (
        (args[1], args[2])
        if func in (torch.ops.aten.addmm.default, torch.ops.aten.baddbmm.default)
        else args[:2]
    )
    batch = a.shape[0] if a.dim() == 3 else 1
    return batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


def compare(updates: int, rounds: int, batch: int, moves: int, clock: str, compiled: bool) -> None:
    t0 = time.perf_counter()
    raw = mixed_connect4(moves)
    print(
        f"data: {len(raw.obs)} Connect Four plies (epsilon 0.3 tactical play), {time.perf_counter() - t0:.0f} s"
    )
    supervised = build_dataset(raw, "mixed", transitions=False)
    transitions = build_dataset(raw, "mixed", transitions=True)
    # (mode, critics): the offline RL modes with their default twin critics and with --critics 1
    variants = [("imitation", 0), ("bc", 0), ("iql", 2), ("iql", 1), ("cql", 2), ("cql", 1)]
    contenders = {}
    for flags, compile_it in (("", False), (" --compile", True)) if compiled else (("", False),):
        for mode, critics in variants:
            data = transitions if critics else supervised
            name = f"ours {mode}{f' --critics {critics}' if critics == 1 else ''}{flags}"
            contenders[name] = ours(mode, data, batch, compiled=compile_it, critics=critics or 2)
    try:
        import d3rlpy  # noqa: F401  optional: requirements-bench.txt
    except ImportError:
        print("d3rlpy is not installed (pip install -r requirements-bench.txt): ours only")
    else:
        for kind, hidden, net in (
            ("bc", None, "default 256x2"),
            ("cql", None, "default 256x2"),
            ("bc", [128] * 3, "mlp 128x3"),
            ("cql", [128] * 3, "mlp 128x3"),
        ):
            contenders[f"d3rlpy Discrete{kind.upper()} ({net})"] = d3rlpy_update(kind, raw, batch, hidden)
    rates = timed(contenders, updates, rounds, clock)
    floors = {
        name: matmul_floor(update, clock) for name, update in contenders.items() if "--compile" not in name
    }
    bc_ref = rates.get("d3rlpy DiscreteBC (default 256x2)")
    cql_ref = rates.get("d3rlpy DiscreteCQL (default 256x2)")
    print(
        f"{'':<36} {'updates/s':>10} {'vs d3rlpy':>10} {'MMACs':>7} {'matmul floor':>13} {'floor vs d3rlpy':>16}"
        f"   ({clock} clock; ratio to d3rlpy's default net)"
    )
    for name, rate in rates.items():
        ref = bc_ref if ("imitation" in name or "bc" in name.lower()) else cql_ref
        ratio = f"{rate / ref:9.2f}x" if ref else "-"
        floor_rate, macs = floors.get(name.replace(" --compile", ""), (0.0, 0))
        floor_ratio = f"{floor_rate / ref:15.2f}x" if ref and floor_rate else "-"
        print(
            f"{name:<36} {rate:10.1f} {ratio:>10} {macs / 1e6:7.1f} {floor_rate:13.1f} {floor_ratio:>16}",
            flush=True,
        )
    print(
        "matmul floor: updates/s if an update ran only its matrix multiplies (forward and backward, "
        "recorded from one eager update and replayed alone); MMACs: its multiply-adds, in millions"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--updates", type=int, default=50, help="Timed updates per block.")
    p.add_argument(
        "--rounds", type=int, default=10, help="Blocks per contender, taking turns; the median is shown."
    )
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this thread's CPU time (steadier on a busy machine, same on a quiet one).",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also time every mode with --compile (torch.compile; its compile time is printed).",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--moves", type=int, default=100_000, help="Plies of the side-by-side data.")
    p.add_argument("--device", default="cpu", help="For the per-game table (the comparison is on CPU).")
    p.add_argument(
        "--games",
        default="",
        help="Also time every mode on random games of these (e.g. tictactoe,connect4) with the daemon's nets.",
    )
    p.add_argument("--modes", default="imitation,bc,iql,cql")
    p.add_argument(
        "--write-teacher-data",
        type=Path,
        help="Only write deterministic-teacher tic-tac-toe data (HDF5) and exit.",
    )
    p.add_argument("--teacher-moves", type=int, default=100_000)
    args = p.parse_args()
    if args.write_teacher_data:
        write_teacher_data(args.write_teacher_data, args.teacher_moves)
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"batch {args.batch_size}, {args.rounds} x {args.updates} timed updates, torch {torch.__version__}, "
        f"{args.threads} thread(s)"
    )
    compare(args.updates, args.rounds, args.batch_size, args.moves, args.clock, args.compile)
    if not args.games:
        return 0
    device = torch.device(args.device)
    print(f"\n{'game':<10} {'mode':<10} {'net':<12} {'updates/s':>10} {'samples/s':>10}  (device {device})")
    for env_id in args.games.split(","):
        net = "mlp 128x3" if get_game(env_id).spec.cells < 16 else "resnet 64x4"
        for mode in args.modes.split(","):
            rate = bench(env_id, mode, args.updates, args.batch_size, device)
            print(
                f"{env_id:<10} {mode:<10} {net:<12} {rate:10.1f} {rate * args.batch_size:10.0f}", flush=True
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
