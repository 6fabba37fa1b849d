"""Offline data: every bad input is one `error:` line with exit code 2 and nothing written;
the formats' options (dict observations, action offsets, D4RL keys, streaming), split,
--init-from and --fresh, and the zero-sum sign of the IQL/CQL targets."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_offline_teacher import play_games, write_hdf5, write_jsonl

from trainer.commands import bc, cql, imitation, iql, split
from trainer.commands.offline_common import build_offline
from trainer.config import load_config
from trainer.config.offline import IQLConfig
from trainer.model.networks import build_network
from trainer.objectives.cql import CQLObjective
from trainer.objectives.iql import IQLObjective
from trainer.objectives.twin_q import masked_max
from trainer.sources.offline_data import HDF5Chunks, load_dataset
from trainer.sources.offline_source import ChunkStreamSource
from trainer.training.state import load_checkpoint_file

FAST = ["--hidden", "16", "--layers", "1", "--batch-size", "32", "--no-progress", "--log-level", "ERROR"]
GAMES = play_games(40, seed=11)


def run(command, tmp_path: Path, data: Path, *extra: str) -> int:
    return command.main(["--data", str(data), "--model-dir", str(tmp_path / "out" / "models"), *FAST, *extra])


def _jsonl(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "d.jsonl"
    p.write_text(text)
    return p


def _good_line(i: int = 0, *, drop: tuple[str, ...] = (), legal: bool = False, **step1) -> str:
    """Game i as one JSONL line; keys in `drop` left out of every step, `step1` overriding
    step 1 (a JSON-ready value, e.g. float("nan") for a literal NaN)."""
    steps = []
    for p in GAMES[i]:
        step = {
            "observation": p["obs"].tolist(),
            "action": p["action"],
            "reward": p["reward"],
            "done": p["done"],
        }
        if legal:
            step["legal_mask"] = p["legal"].astype(int).tolist()
        steps.append({k: v for k, v in step.items() if k not in drop})
    steps[1].update(step1)
    return json.dumps({"episode_id": i, "steps": steps})


def _lines(tmp_path: Path, *lines: str) -> Path:
    return _jsonl(tmp_path, "\n".join(lines) + "\n")


def _bad_h5(tmp_path: Path, **overrides) -> Path:
    return write_hdf5(tmp_path / "d.h5", GAMES[:5], **overrides)


def _truncated_h5(tmp_path: Path) -> Path:
    path = _bad_h5(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _damaged_dataset_h5(tmp_path: Path) -> Path:
    """The file's structure is intact but the compressed bytes of 'states' are garbage, so
    h5py fails only when the data is read."""
    path = _bad_h5(tmp_path, states=None, legal_masks=None)
    rows = np.stack([p["obs"] for g in GAMES[:5] for p in g]).astype(np.float32)
    with h5py.File(path, "a") as f:
        f.create_dataset("states", data=rows, chunks=rows.shape, compression="gzip")
        info = f["states"].id.get_chunk_info(0)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + 8)
        f.write(b"\xff" * (info.size - 16))
    return path


BAD_INPUTS = {
    "missing file": (bc, lambda t: t / "nope.jsonl", "file not found"),
    "empty file": (bc, lambda t: _jsonl(t, ""), "empty file"),
    "blank lines only": (bc, lambda t: _jsonl(t, "\n\n"), "no episodes"),
    "truncated line": (
        bc,
        lambda t: _jsonl(t, _good_line(0) + "\n" + _good_line(1)[:-40]),
        "d.jsonl:2: malformed JSON",
    ),
    "not an object": (bc, lambda t: _jsonl(t, "[1, 2]\n"), "d.jsonl:1: expected an object"),
    "non-finite jsonl": (
        bc,
        lambda t: _jsonl(t, _good_line(0) + "\n" + _good_line(1).replace("0.0", "NaN", 1)),
        "d.jsonl:2 step 0: observation has NaN",
    ),
    "ragged observation": (
        bc,
        lambda t: _jsonl(t, _good_line(0) + "\n" + _good_line(1).replace("[0.0, ", "[", 1)),
        "d.jsonl:2 step 0: observation has 28 numbers",
    ),
    "jsonl action out of range": (
        bc,
        lambda t: _jsonl(t, _good_line(0).replace('"action": ', '"action": 40', 1)),
        "out of range",
    ),
    "action type without offsets": (
        bc,
        lambda t: _jsonl(
            t, json.dumps({"steps": [{"observation": [1, 2], "action_type": "move", "action_target": 1}]})
        ),
        "no --action-offsets",
    ),
    "not hdf5": (
        imitation,
        lambda t: _jsonl(t, "hello").rename(t / "x.h5") or t / "x.h5",
        "not a readable HDF5",
    ),
    "missing dataset": (imitation, lambda t: _bad_h5(t, actions=None), "missing dataset 'actions'"),
    "row count mismatch": (
        imitation,
        lambda t: _bad_h5(t, rewards=np.zeros(3, np.float32)),
        "'rewards' has shape (3,)",
    ),
    "shape vs game": (
        imitation,
        lambda t: _bad_h5(
            t, states=np.zeros((len([p for g in GAMES[:5] for p in g]), 30), np.float32), legal_masks=None
        ),
        "observations have 30 numbers, tictactoe observations have 29",
    ),
    "hdf5 action out of range": (
        imitation,
        lambda t: _bad_h5(t, actions=np.full(sum(map(len, GAMES[:5])), 9)),
        "row 0: action 9 is out of range [0, 9)",
    ),
    "illegal action": (
        imitation,
        lambda t: _bad_h5(t, legal_masks=np.zeros((sum(map(len, GAMES[:5])), 9), bool)),
        "is not legal",
    ),
    "non-finite hdf5": (
        imitation,
        lambda t: _bad_h5(
            t, outcomes=np.r_[np.zeros(sum(map(len, GAMES[:5])) - 1), np.inf].astype(np.float32)
        ),
        "outcome is NaN or infinite",
    ),
    "iql without rewards": (iql, lambda t: _bad_h5(t, rewards=None), "needs rewards"),
    "missing observation": (
        bc,
        lambda t: _lines(t, _good_line(0), _good_line(1, drop=("observation",))),
        "d.jsonl:2 step 0: no 'observation'",
    ),
    "NaN in legal mask": (
        bc,
        lambda t: _lines(
            t, _good_line(0, legal=True), _good_line(1, legal=True, legal_mask=[float("nan")] * 9)
        ),
        "d.jsonl:2 step 1: legal mask holds nan",
    ),
    "junk in legal mask": (
        bc,
        lambda t: _lines(t, _good_line(0, legal=True, legal_mask=[0.7] * 9)),
        "d.jsonl:1 step 1: legal mask holds 0.7",
    ),
    "NaN reward": (
        iql,
        lambda t: _lines(t, _good_line(0, reward=float("nan"))),
        "d.jsonl:1 step 1: reward is nan",
    ),
    "junk done": (
        bc,
        lambda t: _lines(t, _good_line(0, done=2)),
        "d.jsonl:1 step 1: done must be true/false",
    ),
    "cql jsonl step without reward": (
        cql,
        lambda t: _lines(t, _good_line(0), _good_line(1, drop=("reward",))),
        "d.jsonl:2 step 0: no 'reward'",
    ),
    "iql jsonl without rewards": (
        iql,
        lambda t: _lines(t, _good_line(0, drop=("reward",))),
        "d.jsonl:1 step 0: no 'reward'",
    ),
    "iql hdf5 without dones": (
        iql,
        lambda t: _bad_h5(t, d4rl=True, terminals=None),
        "d.h5: offline RL needs dataset 'dones' (or 'terminals')",
    ),
    "truncated hdf5": (
        imitation,
        _truncated_h5,
        "d.h5: not a readable HDF5 file (Unable to synchronously open file (truncated file",
    ),
    "damaged hdf5 dataset": (
        imitation,
        _damaged_dataset_h5,
        "d.h5: dataset 'states' is damaged or truncated",
    ),
    "unknown format": (
        bc,
        lambda t: _jsonl(t, "x").rename(t / "d.csv") or t / "d.csv",
        "unknown data format",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line(case, tmp_path, capsys):
    command, make, expected = BAD_INPUTS[case]
    data = make(tmp_path)
    assert run(command, tmp_path, data) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_resume_without_checkpoint_and_existing_run(tmp_path, capsys):
    data = write_jsonl(tmp_path / "t.jsonl", GAMES)
    assert run(bc, tmp_path, data, "--resume", "--epochs", "1") == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert run(bc, tmp_path, data, "--epochs", "1") == 0
    assert run(bc, tmp_path, data, "--epochs", "1") == 2  # would silently mix two runs
    assert "--resume" in capsys.readouterr().err
    assert run(bc, tmp_path, data, "--epochs", "1", "--fresh") == 0


def test_fresh_keeps_the_old_run_when_init_from_is_bad(tmp_path, capsys):
    data = write_jsonl(tmp_path / "t.jsonl", GAMES)
    assert run(bc, tmp_path, data, "--epochs", "1") == 0
    latest = tmp_path / "out" / "checkpoints" / "latest.pt"
    before = latest.read_bytes()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for bad in (tmp_path / "nope.pt", garbage):
        assert run(bc, tmp_path, data, "--epochs", "1", "--fresh", "--init-from", str(bad)) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
        assert latest.read_bytes() == before


def test_jsonl_reward_and_done_may_be_left_out(tmp_path):
    """Without 'done' a game's last step is its end; without 'reward' bc still trains."""
    explicit = load_dataset(_lines(tmp_path, *(_good_line(i) for i in range(4))), transitions=True)
    no_done = load_dataset(
        _lines(tmp_path, *(_good_line(i, drop=("done",)) for i in range(4))), transitions=True
    )
    assert explicit.done.sum() == 4 and bool(explicit.has_next.all())
    for key in ("done", "reward", "value", "has_next", "next_legal_mask"):
        assert torch.equal(getattr(no_done, key), getattr(explicit, key)), key

    data = _lines(tmp_path, *(_good_line(i, drop=("reward", "done")) for i in range(len(GAMES))))
    no_reward = load_dataset(data, transitions=False)
    assert not no_reward.has_values  # nothing to backfill outcomes from
    assert run(bc, tmp_path, data, "--epochs", "1") == 0


def test_dict_observations_and_action_offsets(tmp_path):
    """A game the trainer does not know: dict observations, typed actions, no legal masks."""
    rng = np.random.default_rng(0)
    lines = []
    for ep in range(30):
        steps = []
        for k in range(4):
            grid = rng.integers(0, 2, size=(2, 3)).tolist()
            kind, target = ("move", int(np.argmax(grid[0]))) if k % 2 == 0 else ("pass", 0)
            steps.append(
                {
                    "observation": {"grid": grid, "turn": k % 2, "aux": {"b": [1.5], "a": 2}},
                    "action_type": kind,
                    "action_target": target,
                    "reward": float(k == 3),
                    "done": k == 3,
                }
            )
        lines.append(json.dumps({"episode_id": ep, "steps": steps}))
    data = _jsonl(tmp_path, "\n".join(lines) + "\n")
    offsets = tmp_path / "offsets.toml"
    offsets.write_text("move = 0\npass = 3\n")
    ds = load_dataset(data, transitions=True, action_offsets={"move": 0, "pass": 3}, num_actions=4)
    first = json.loads(lines[0])["steps"][0]
    # sorted keys: aux (a, b), grid (row-major), turn
    assert ds.obs[0].tolist() == [2.0, 1.5, *np.ravel(first["observation"]["grid"]).tolist(), 0.0]
    assert ds.spec.num_actions == 4 and ds.spec.obs_size == 9 and bool(ds.legal_mask.all())
    assert ds.action[1].item() == 3
    assert (
        run(bc, tmp_path, data, "--action-offsets", str(offsets), "--num-actions", "4", "--epochs", "2") == 0
    )
    assert (tmp_path / "out" / "models" / "latest.onnx").exists()
    state = load_checkpoint_file(tmp_path / "out" / "checkpoints" / "latest.pt")
    assert state.env_id == "custom_9x4" and state.network["net"] == "mlp"


def test_d4rl_keys_transitions_stay_inside_games(tmp_path):
    games = play_games(6, seed=2)
    path = write_hdf5(tmp_path / "d.h5", games, d4rl=True, next_observations=None, with_outcomes=False)
    ds = load_dataset(path, transitions=True)
    assert ds.spec.env_id == "tictactoe" and ds.num_episodes == 6
    rows = [p for g in games for p in g]
    for i, p in enumerate(rows):
        if not p["done"]:
            assert torch.equal(ds.next_obs[i], torch.from_numpy(p["next_obs"]))
            assert torch.equal(ds.next_legal_mask[i], torch.from_numpy(p["next_legal"]))
        else:
            assert ds.done[i] == 1 and not ds.next_legal_mask[i].any()
    # outcomes backfilled from the last reward: winner's plies +1, loser's -1
    g0 = games[0]
    z = g0[-1]["reward"]
    assert ds.value[: len(g0)].tolist() == [z if (len(g0) - 1 - k) % 2 == 0 else -z for k in range(len(g0))]


def test_streamed_chunks_equal_the_whole_file(tmp_path):
    path = write_hdf5(tmp_path / "d.h5", play_games(20, seed=4), d4rl=True, next_observations=None)
    whole = load_dataset(path, transitions=True)
    chunks = HDF5Chunks(path, 16, transitions=True)
    parts = list(chunks)
    chunks.close()
    assert sum(len(p) for p in parts) == len(whole)
    for key in ("obs", "next_obs", "action", "reward", "done", "value"):
        assert torch.equal(torch.cat([getattr(p, key) for p in parts]), getattr(whole, key)), key

    # the streamed source resumes mid-chunk with exactly the batches it would have given
    def source():
        c = HDF5Chunks(path, 16, transitions=True)
        return ChunkStreamSource(
            c, list(range(c.num_chunks)), 8, seed=3, epochs=2, device=torch.device("cpu"), transitions=True
        )

    a, b = source(), source()
    for _ in range(5):
        a.next_batch()
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x.obs, y.obs) and torch.equal(x.next_obs, y.next_obs)
    a.close(), b.close()
    # and a run streams them
    assert (
        run(imitation, tmp_path, path, "--stream-threshold-mb", "0", "--chunk-rows", "32", "--epochs", "2")
        == 0
    )


def test_streamed_file_is_checked_before_training(tmp_path, capsys):
    """A bad row in the last chunk stops the run before any training or output."""
    n = sum(map(len, GAMES))
    actions = np.asarray([p["action"] for g in GAMES for p in g])
    actions[-1] = 9
    path = write_hdf5(tmp_path / "d.h5", GAMES, actions=actions)
    assert (
        run(imitation, tmp_path, path, "--stream-threshold-mb", "0", "--chunk-rows", "16", "--epochs", "1")
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {path}: row {n - 1}: action 9 is out of range [0, 9)"
    assert not (tmp_path / "out").exists()


def test_streamed_action_count_comes_from_the_whole_file(tmp_path):
    """A game known only from its data: the first chunk's actions do not show them all."""
    rng = np.random.default_rng(0)
    actions = np.r_[rng.integers(0, 2, 16), rng.integers(0, 5, 48)]
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("states", data=rng.normal(size=(64, 6)).astype(np.float32))
        f.create_dataset("actions", data=actions)
    chunks = HDF5Chunks(path, 16, transitions=False)
    assert (
        chunks.spec.num_actions == load_dataset(path, transitions=False).spec.num_actions == actions.max() + 1
    )
    assert torch.equal(torch.cat([c.action for c in chunks]), torch.from_numpy(actions))
    chunks.close()


def test_split_is_seeded_by_episode_and_atomic(tmp_path, capsys):
    data = write_jsonl(tmp_path / "all.jsonl", GAMES)
    args = ["--data", str(data), "--val-fraction", "0.25", "--seed", "5", "--log-level", "ERROR"]
    outs = [tmp_path / n for n in ("a.jsonl", "b.jsonl", "c.jsonl", "d.jsonl")]
    assert split.main([*args, "--out-train", str(outs[0]), "--out-val", str(outs[1])]) == 0
    assert split.main([*args, "--out-train", str(outs[2]), "--out-val", str(outs[3])]) == 0
    assert outs[0].read_bytes() == outs[2].read_bytes() and outs[1].read_bytes() == outs[3].read_bytes()
    train, val = outs[0].read_text().splitlines(), outs[1].read_text().splitlines()
    assert len(val) == 10 and sorted(train + val) == sorted(data.read_text().splitlines())
    bad = _jsonl(tmp_path, data.read_text() + '{"steps": [')
    assert (
        split.main(["--data", str(bad), "--out-train", str(tmp_path / "x"), "--out-val", str(tmp_path / "y")])
        == 2
    )
    assert f"d.jsonl:{len(GAMES) + 1}: malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # bc with the split files
    assert run(bc, tmp_path, outs[0], "--val-data", str(outs[1]), "--epochs", "1") == 0


def test_init_from_bc_checkpoint(tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", GAMES)
    assert run(bc, tmp_path, data, "--epochs", "1") == 0
    ckpt = tmp_path / "out" / "checkpoints" / "latest.pt"
    bc_net = load_checkpoint_file(ckpt).objective["net"]
    argv = [
        "--data",
        str(data),
        "--model-dir",
        str(tmp_path / "iql" / "models"),
        *FAST,
        "--init-from",
        str(ckpt),
    ]
    loop = build_offline("iql", load_config(IQLConfig, argv), iql.make_objective)
    for k, v in loop.objective.net.state_dict().items():
        assert torch.equal(v, bc_net[k]), k
    loop.source.close()


@pytest.mark.parametrize("algo", ["iql", "cql"])
def test_bootstrap_negates_the_opponents_value(algo, tmp_path):
    """target = r + gamma * (1 - done) * (-V(s')) with V(s') = max over legal Q for CQL."""
    ds = load_dataset(write_jsonl(tmp_path / "t.jsonl", GAMES[:4]), transitions=True)
    batch, spec = ds.batch(torch.arange(len(ds))), ds.spec
    torch.manual_seed(0)
    make = lambda: build_network(spec, "mlp", 16, 1)  # noqa: E731
    common = dict(lr=1e-3, weight_decay=0.0, grad_clip=0.0, gamma=0.9, target_update_rate=0.5)
    if algo == "iql":
        obj = IQLObjective(make(), make, expectile=0.7, beta=1.0, max_weight=10.0, **common)
        obj.net.eval()
        with torch.no_grad():
            v_next = obj.net(batch.next_obs)[1].squeeze(-1)
    else:
        obj = CQLObjective(make(), make, alpha=1.0, policy_temperature=0.1, **common)
        with torch.no_grad():  # online == target at the start, so double Q picks the max
            q1, q2 = obj.q(batch.next_obs)
            v_next = masked_max((q1 + q2) / 2, batch.next_legal_mask)
    y = obj.losses(batch)["y"]
    want = batch.reward + 0.9 * (1 - batch.done) * -v_next
    assert torch.allclose(y, want, atol=1e-6)
    assert torch.equal(y[batch.done == 1], batch.reward[batch.done == 1])


def test_player_count_sets_the_sign_of_outcomes_and_bootstrap(tmp_path, capsys):
    """Single-agent logs (--player-count 1) keep the sign; two-player data flips it every ply."""
    rng = np.random.default_rng(0)
    lines = []
    for g in range(12):
        steps = [
            {
                "observation": rng.random(5).round(3).tolist(),
                "action": int(rng.integers(3)),
                "reward": 0.0,
                "done": False,
            }
            for _ in range(4)
        ]
        steps[-1].update(reward=1.0, done=True)
        lines.append(json.dumps({"episode_id": g, "steps": steps}))
    data = _jsonl(tmp_path, "\n".join(lines) + "\n")

    single = load_dataset(data, transitions=True, player_count=1)
    assert single.spec.player_count == 1 and torch.all(single.value == 1.0)
    duo = load_dataset(data, transitions=True)
    assert duo.spec.player_count == 2 and duo.value[:4].tolist() == [-1.0, 1.0, -1.0, 1.0]

    argv = ["--data", str(data), "--model-dir", str(tmp_path / "iql" / "models"), *FAST]
    for extra, sign in (([], -1.0), (["--player-count", "1"], 1.0)):
        loop = build_offline("iql", load_config(IQLConfig, [*argv, *extra]), iql.make_objective)
        assert loop.objective.sign == sign
        loop.source.close()

    # A known game's player count is not the user's to change.
    ttt = write_jsonl(tmp_path / "ttt.jsonl", GAMES)
    assert run(iql, tmp_path, ttt, "--player-count", "1", "--steps", "2") == 2
    assert "tictactoe has 2 players, not --player-count 1" in capsys.readouterr().err
