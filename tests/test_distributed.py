"""Data-parallel training on the CPU: two real processes in a gloo group, real files.

Ranks are started with the environment torchrun gives its workers (RANK, WORLD_SIZE,
MASTER_ADDR, ...): in spawned processes where a test needs to look inside a rank, as
`python -m trainer` processes where it needs signals, and through torchrun itself where
torchrun's own part (forwarding SIGTERM) is what is tested.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from daemon_harness import DAEMON_FAST, REPO, daemon_args, read_stats, tail_log, wait_for, wait_for_step
from ddp_workers import WORLD, daemon_rank, deterministic_batches, loop_rank, rank_env, train_on
from replay_data import write_games_slowly, write_random_games
from test_train_loop import SPEC

from trainer.games import get_game
from trainer.model.networks import build_network
from trainer.model.onnx_export import verify_onnx
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.training.state import TrainState, load_checkpoint_file

TINY = ["--net", "mlp", "--hidden", "16", "--layers", "1", "--batch-size", "16", "--eval-interval", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folders(data: Path) -> list[str]:
    return [
        "--db",
        str(data.parent / "replay.db"),
        "--model-dir",
        str(data / "models"),
        "--stats",
        str(data / "stats.json"),
        "--checkpoint-dir",
        str(data / "checkpoints"),
    ]


def run_spawned(target, args_per_rank: list[tuple], timeout: float = 120) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=args) for args in args_per_rank]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)


# --- the daemon's ranks, looked inside --------------------------------------------------------


def test_two_ranks_beside_a_live_writer_train_the_same_weights_and_only_rank_0_writes(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 30, seed=1)
    initial_rows = 30 * 9  # at most nine plies a game; the writer adds more
    writer_error: list[BaseException] = []

    def writer() -> None:
        try:  # no retries beyond SQLite's busy timeout: a lock held by a rank fails it
            write_games_slowly(db, "tictactoe", 150, seed=2, pause_s=0.02)
        except BaseException as exc:
            writer_error.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    port = free_port()
    common = [*TINY, "--steps", "120", "--seed", "5", *DAEMON_FAST, "--poll-interval", "0.1"]
    common += ["--checkpoint-interval", "50"]
    run_spawned(
        daemon_rank,
        [
            (r, port, [*folders(tmp_path / f"rank{r}"), *common], str(tmp_path / f"rank{r}.pt"))
            for r in range(WORLD)
        ],
    )
    thread.join(120)
    assert not writer_error, writer_error

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["step"] for r in ranks] == [120, 120]  # --steps reached by both, together
    for name, tensor in ranks[0]["net"].items():
        assert torch.equal(tensor, ranks[1]["net"][name]), name
    for r in ranks:  # each rank tailed the writer itself
        assert r["source"]["rows_seen"] > initial_rows
    assert not (tmp_path / "rank1").exists()  # rank 1 never touched its folders
    stats = json.loads((tmp_path / "rank0" / "stats.json").read_text())
    assert stats["state"] == "stopped" and stats["step"] == 120
    assert stats["world_size"] == WORLD and stats["global_batch_size"] == WORLD * 16
    assert stats["samples_seen"] == 120 * WORLD * 16
    # The published model is a contract model, and computes what rank 1's weights compute.
    net = build_network(get_game("tictactoe").spec, "mlp", hidden=16, layers=1)
    net.load_state_dict(ranks[1]["net"])
    verify_onnx(tmp_path / "rank0" / "models" / "latest.onnx", net, get_game("tictactoe").spec)
    assert load_checkpoint_file(tmp_path / "rank0" / "checkpoints" / "latest.pt").step == 120


# --- the loop's arithmetic: 2 ranks x B == 1 process x 2B -------------------------------------


def test_two_ranks_of_batch_b_train_the_weights_of_one_process_with_batch_2b_and_stop_together(tmp_path):
    steps, half = 12, 8
    port = free_port()
    run_spawned(loop_rank, [(r, port, steps, half, str(tmp_path / f"r{r}.pt")) for r in range(WORLD)])
    loop = train_on(list(deterministic_batches(steps, 2 * half)), steps)
    assert loop.state.step == steps
    single = loop.objective.net.state_dict()
    results = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(WORLD)]
    for got in results:
        for name, want in single.items():
            torch.testing.assert_close(got["net"][name], want, rtol=1e-4, atol=1e-5, msg=name)
    # Stops and give-ups are decided together: a stop asked on rank 1 alone stops both at
    # its step, and rank 0, which had batches, gives up with rank 1.
    assert [r["stopped_at"] for r in results] == [3, 3]
    assert all("--max-wait" in r["gave_up"] for r in results) and "no db" in results[1]["gave_up"], results
    # Not trivially equal: training moved the weights.
    torch.manual_seed(0)
    start = build_network(SPEC, "mlp", hidden=32, layers=2).state_dict()
    assert any(not torch.allclose(start[k], single[k]) for k in single)


# --- processes and signals ----------------------------------------------------------------


def start_rank(data: Path, rank: int, port: int, *extra: str, env: dict | None = None) -> subprocess.Popen:
    args = daemon_args(data, *extra)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env if env is not None else rank_env(rank, port)))
    log = open(data / f"rank{rank}.log", "ab")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


RUN = [
    *TINY,
    "--steps",
    "0",
    "--checkpoint-interval",
    "20",
    "--seed",
    "1",
    "--dist-timeout",
    "20",
    *DAEMON_FAST,
]


def run_ranks(data: Path, *extra: str) -> TrainState:
    """A two-rank run to its --steps; the checkpoint it leaves."""
    port = free_port()
    ranks = [start_rank(data, r, port, *RUN, *extra) for r in range(WORLD)]
    assert [p.wait(90) for p in ranks] == [0, 0], tail_log(data, "rank0.log")
    return load_checkpoint_file(data / "checkpoints" / "latest.pt")


def run_one_process(data: Path, *extra: str) -> TrainState:
    single = start_rank(data, 0, 0, *RUN, *extra, env={})
    assert single.wait(60) == 0, tail_log(data, "rank0.log")
    return load_checkpoint_file(data / "checkpoints" / "latest.pt")


def test_killed_rank_ends_rank_0_with_an_error_and_the_run_resumes_in_one_process(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=3)
    port = free_port()
    ranks = [start_rank(tmp_path, r, port, *RUN) for r in range(WORLD)]
    try:
        wait_for_step(tmp_path, 45, 90, ranks[0])
        ranks[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        rc = ranks[0].wait(40)
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
    assert time.monotonic() - t0 < 20  # --dist-timeout
    log0 = (tmp_path / "rank0.log").read_text()
    assert rc == 1 and "error: another rank stopped answering" in log0, log0[-2000:]
    killed_at = load_checkpoint_file(tmp_path / "checkpoints" / "latest.pt")
    assert killed_at.step >= 40
    verify_onnx(tmp_path / "models" / "latest.onnx", _net_of(killed_at), get_game("tictactoe").spec)

    # 2 ranks -> 1 process: the same weights and counters, the global sample count kept.
    one = run_one_process(tmp_path, "--steps", str(killed_at.step + 10))
    assert one.step == killed_at.step + 10
    assert one.source["samples"] == killed_at.source["samples"] + 10 * 16


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_in_two_ranks_and_back(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=3)
    one = run_one_process(tmp_path, "--steps", "20")
    two = run_ranks(tmp_path, "--steps", "30")
    assert two.step == 30 and two.samples_trained == one.samples_trained + 10 * 2 * 16
    assert two.source["samples"] == one.source["samples"] + 10 * 2 * 16
    assert not (two.objective["net"]["trunk.0.weight"] == one.objective["net"]["trunk.0.weight"]).all()
    again = run_one_process(tmp_path, "--steps", "40")
    assert again.step == 40 and again.source["samples"] == two.source["samples"] + 10 * 16
    stats = read_stats(tmp_path)
    assert stats["state"] == "stopped" and stats["step"] == 40


def _net_of(state: TrainState) -> torch.nn.Module:
    net = build_network(get_game("tictactoe").spec, "mlp", hidden=16, layers=1)
    net.load_state_dict(state.objective["net"])
    return net


def test_sigterm_to_torchrun_stops_every_rank_cleanly(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=3)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(WORLD),
        "-m",
        "trainer",
    ]
    args = daemon_args(tmp_path, *TINY, "--steps", "0", "--checkpoint-interval", "1000", *DAEMON_FAST)
    env = dict(os.environ, PYTHONUNBUFFERED="1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    log = open(tmp_path / "daemon.log", "ab")
    proc = subprocess.Popen(torchrun + args[3:], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_step(tmp_path, 30, 90, proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stats = wait_for(lambda: (s := read_stats(tmp_path)) and s["state"] == "stopped" and s, 5, "stopped")
    ckpt = load_checkpoint_file(tmp_path / "checkpoints" / "latest.pt")
    assert ckpt.step == stats["step"] > 30
    verify_onnx(tmp_path / "models" / "latest.onnx", _net_of(ckpt), get_game("tictactoe").spec)
    assert "another rank stopped answering" not in (tmp_path / "daemon.log").read_text()


def test_without_torchrun_there_is_no_process_group():
    from trainer.distributed.process_group import init_from_env, launched_by_torchrun

    assert not launched_by_torchrun({"RANK": "0"})
    if not launched_by_torchrun():
        ctx = init_from_env("cpu")
        assert (ctx.rank, ctx.world_size, ctx.distributed) == (0, 1, False)
        assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("amp", ["bf16"])
def test_amp_bf16_trains_a_float32_net_on_the_cpu(amp):
    from trainer.distributed.ddp import training_forward
    from trainer.distributed.process_group import DistContext

    torch.manual_seed(0)
    net = build_network(SPEC, "mlp", hidden=32, layers=2)
    objective = PolicyValueObjective(net, lr=1e-2)
    objective.wrap_for_training(lambda n: training_forward(n, DistContext.single(), torch.device("cpu"), amp))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    metrics = objective.train_step(deterministic_batches(1, 16)[0], 1e-2)
    assert all(v.dtype == torch.float32 for v in net.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert metrics["total_loss"] > 0


def test_each_rank_keeps_the_run_s_global_sample_count_and_its_own_rng_stream(tmp_path):
    from trainer.commands.train import rank_source
    from trainer.config import DaemonConfig
    from trainer.distributed.process_group import DistContext

    write_random_games(tmp_path / "replay.db", "tictactoe", 5, seed=1)
    cfg = DaemonConfig(db=tmp_path / "replay.db", model_dir=tmp_path / "models", seed=3, max_reuse=4)
    ranks = [DistContext(rank=r, world_size=WORLD, local_rank=r, backend="gloo") for r in range(WORLD)]
    sources = [rank_source(cfg, ctx, torch.device("cpu")) for ctx in ranks]
    saved = {**sources[0].state_dict(), "samples": 1000}  # as a checkpoint holds it: global
    try:
        assert [s.inner.cfg.max_reuse for s in sources] == [2.0, 2.0]  # the budget, shared out
        for s in sources:
            s.load_state_dict(saved, step=40)
            assert s.inner.state_dict()["samples"] == 500 and s.state_dict()["samples"] == 1000
        assert sources[0].state_dict()["rng"] == saved["rng"]
        assert sources[1].state_dict()["rng"] != saved["rng"]
        again = rank_source(cfg, ranks[1], torch.device("cpu"))
        sources.append(again)
        again.load_state_dict(saved, step=40)
        assert again.state_dict()["rng"] == sources[1].state_dict()["rng"]  # re-derived, repeatably
        assert sources[0].stats()["global_batch_size"] == WORLD * cfg.batch_size
    finally:
        for s in sources:
            s.close()
