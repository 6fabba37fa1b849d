"""The offline modes data-parallel on the CPU: two real ranks in a gloo group, real files.

Each rank trains on its own shard of every epoch. The ranks are spawned with torchrun's
environment and run the commands as `python -m trainer` does, one process group per
command, so one pair of processes serves every test; the tests compare what the ranks
trained, the files rank 0 alone wrote, and one process trained on the same data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ddp_workers import WORLD, offline_runs
from test_distributed import free_port, run_spawned
from test_offline_teacher import play_games, write_hdf5, write_jsonl

from trainer.commands import bc, iql
from trainer.commands.offline_common import build_offline
from trainer.config import load_config
from trainer.config.offline import BCConfig
from trainer.games import get_game
from trainer.model.networks import build_network
from trainer.model.onnx_export import verify_onnx
from trainer.sources.offline_data import HDF5Chunks, load_dataset
from trainer.sources.offline_source import ChunkStreamSource, ShuffledSource
from trainer.training.run import release_checkpoint_dir, run_to_end
from trainer.training.state import load_checkpoint_file

SPEC = get_game("tictactoe").spec
NET = ["--net", "mlp", "--hidden", "16", "--layers", "1", "--threads", "1", "--no-progress"]
B = 16


@pytest.fixture(scope="module")
def games(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("ddp_offline") / "teacher.jsonl", play_games(40, seed=3))


def argv(data: Path, out: Path, *extra: str, batch: int = B) -> list[str]:
    return [
        "--data",
        str(data),
        "--model-dir",
        str(out / "models"),
        "--batch-size",
        str(batch),
        "--seed",
        "7",
        "--log-level",
        "WARNING",
        *NET,
        *extra,
    ]


def tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of an objective's state (weights and optimiser moments), by path."""
    flat: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            flat[f"{prefix}{k}"] = v
        elif isinstance(v, dict):
            flat.update(tensors(v, f"{prefix}{k}."))
    return flat


BC_LENGTH = ["--epochs", "12", "--lr", "0.05", "--patience", "1", "--lr-scheduler", "constant"]
IQL_LENGTH = ["--steps", "10", "--checkpoint-interval", "5"]
CQL_LENGTH = ["--steps", "4", "--checkpoint-interval", "4"]


@pytest.fixture(scope="module")
def two_ranks(games, tmp_path_factory) -> tuple[Path, list[dict[str, dict]]]:
    """bc, iql and cql, one after another on two ranks: (their folder, per rank {mode: what
    it trained})."""
    root = tmp_path_factory.mktemp("two_ranks")
    modes = {"bc": BC_LENGTH, "iql": IQL_LENGTH, "cql": CQL_LENGTH}
    ports = {mode: free_port() for mode in modes}

    def jobs(rank: int) -> list[tuple[str, int, list[str]]]:
        return [(m, ports[m], argv(games, root / m / f"rank{rank}", *extra)) for m, extra in modes.items()]

    run_spawned(offline_runs, [(r, jobs(r), str(root / f"rank{r}.pt")) for r in range(WORLD)])
    results = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return root, [dict(zip(modes, per_rank, strict=True)) for per_rank in results]


def assert_same_on_every_rank_and_only_rank_0_wrote(ranks: list[dict], folder: Path) -> None:
    assert [r["code"] for r in ranks] == [0, 0]
    assert ranks[0]["step"] == ranks[1]["step"] > 0
    a, b = tensors(ranks[0]["objective"]), tensors(ranks[1]["objective"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not (folder / "rank1").exists()  # rank 1 never touched its folders
    saved = load_checkpoint_file(folder / "rank0" / "checkpoints" / "latest.pt")
    assert saved.step == ranks[0]["step"]
    net = build_network(SPEC, "mlp", hidden=16, layers=1)
    net.load_state_dict(ranks[1]["objective"]["net"])
    verify_onnx(folder / "rank0" / "models" / "latest.onnx", net, SPEC)


def test_bc_on_two_ranks_of_batch_b_trains_what_one_process_of_batch_2b_does_and_stops_early_together(
    two_ranks, games, tmp_path
):
    root, results = two_ranks
    ranks = [r["bc"] for r in results]
    assert_same_on_every_rank_and_only_rank_0_wrote(ranks, root / "bc")
    # A high LR and --patience 1: the validation loss soon stops improving.
    assert ranks[0]["stop_reason"].startswith("early stopping")
    assert ranks[1]["stop_reason"] == ranks[0]["stop_reason"]
    assert (root / "bc" / "rank0" / "checkpoints" / "best.pt").exists()
    stats = json.loads((root / "bc" / "rank0" / "stats.json").read_text())
    assert stats["world_size"] == WORLD and stats["global_batch_size"] == WORLD * B
    assert stats["step"] == ranks[0]["step"] and stats["samples_seen"] == stats["step"] * WORLD * B

    cfg = load_config(BCConfig, argv(games, tmp_path, *BC_LENGTH, batch=2 * B))
    loop = build_offline("bc", cfg, bc.make_objective)
    run_to_end(loop)
    release_checkpoint_dir(cfg.checkpoint_dir)
    assert loop.stop_reason.startswith("early stopping")
    assert loop.state.step == ranks[0]["step"]
    one = tensors(loop.objective.state_dict())
    for k, v in tensors(ranks[0]["objective"]).items():
        assert torch.allclose(v, one[k], atol=1e-5), k


def test_iql_on_two_ranks_trains_the_same_nets_on_every_rank_and_resumes_in_one_process(two_ranks, games):
    root, results = two_ranks
    ranks = [r["iql"] for r in results]
    assert ranks[0]["step"] == 10
    assert_same_on_every_rank_and_only_rank_0_wrote(ranks, root / "iql")
    assert "q" in ranks[1]["objective"] and "q_target" in ranks[1]["objective"]

    folder = root / "iql" / "rank0"
    two = load_checkpoint_file(folder / "checkpoints" / "latest.pt")
    assert two.source["world_size"] == WORLD
    assert iql.main([*argv(games, folder, *IQL_LENGTH), "--steps", "14", "--resume"]) == 0
    one = load_checkpoint_file(folder / "checkpoints" / "latest.pt")
    assert one.step == 14 and one.source["world_size"] == 1
    # The same rows of the epoch behind it: twice the steps of the half-size global batch.
    steps_per_epoch = one.source["rows"] // B
    assert one.source["step_in_epoch"] == (2 * two.source["step_in_epoch"] + 4) % steps_per_epoch


def test_cql_on_two_ranks_trains_the_same_nets_on_every_rank(two_ranks):
    root, results = two_ranks
    ranks = [r["cql"] for r in results]
    assert ranks[0]["step"] == 4
    assert_same_on_every_rank_and_only_rank_0_wrote(ranks, root / "cql")


# --- the shards ------------------------------------------------------------------------------


def test_shards_are_disjoint_halves_of_the_one_process_batch_and_resume_with_another_world(games):
    data = load_dataset(games, transitions=False)
    rows = torch.arange(len(data))
    one = ShuffledSource(data, rows, 2 * B, seed=5, epochs=2)
    two = [ShuffledSource(data, rows, B, seed=5, epochs=2, rank=r, world_size=2) for r in range(2)]
    assert two[0].steps_per_epoch == two[1].steps_per_epoch == one.steps_per_epoch
    for _ in range(one.steps_per_epoch * 2):
        whole = one.next_batch().obs
        halves = [s.next_batch().obs for s in two]
        assert torch.equal(torch.cat(halves), whole)
    assert one.exhausted and all(s.exhausted for s in two)

    # Three global steps of 2 ranks, then one process: it continues with rank 0's next batch.
    two = [ShuffledSource(data, rows, B, seed=5, epochs=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        for s in two:
            s.next_batch()
    resumed = ShuffledSource(data, rows, B, seed=5, epochs=2)
    resumed.load_state_dict(two[0].state_dict())
    assert torch.equal(resumed.next_batch().obs, two[0].next_batch().obs)


def test_streamed_chunks_are_shared_out_the_same_way(tmp_path):
    path = write_hdf5(tmp_path / "teacher.h5", play_games(40, seed=3))
    chunks = HDF5Chunks(path, 4 * B, transitions=False)
    ids = list(range(chunks.num_chunks))
    cpu = torch.device("cpu")

    def source(batch: int, rank: int = 0, world: int = 1) -> ChunkStreamSource:
        return ChunkStreamSource(chunks, ids, batch, 5, 1, cpu, False, rank=rank, world_size=world)

    one, two = source(2 * B), [source(B, r, 2) for r in range(2)]
    assert two[0].steps_per_epoch == two[1].steps_per_epoch == one.steps_per_epoch
    while (whole := one.next_batch()) is not None:
        halves = [s.next_batch() for s in two]
        # A last chunk smaller than the global batch loses at most its odd row.
        assert torch.equal(torch.cat([h.obs for h in halves]), whole.obs[: 2 * len(halves[0])])
    assert all(s.next_batch() is None for s in two)
    chunks.close()
