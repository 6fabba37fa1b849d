"""`python -m actor_stub.generate`: HDF5 and JSONL datasets from teachers."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from actor_stub.generate import GenerateConfig, generate, main
from trainer.games import get_game
from trainer.search.players import PerfectPlayer


def test_hdf5_layout_and_perfect_teacher(tmp_path):
    out = tmp_path / "train.h5"
    assert (
        main(
            [
                "--env-id",
                "tictactoe",
                "--games",
                "40",
                "--teacher",
                "perfect",
                "--epsilon",
                "0",
                "--output",
                str(out),
                "--seed",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    game = get_game("tictactoe")
    with h5py.File(out) as f:
        n = len(f["actions"])
        assert f["states"].shape == (n, 29) and f["states"].dtype == np.float32
        assert f["next_states"].shape == (n, 29)
        assert f["actions"].dtype == np.int64
        assert f["legal_masks"].shape == (n, 9) and f["next_legal_masks"].shape == (n, 9)
        for k in ("rewards", "dones", "episode_ids", "outcomes"):
            assert f[k].shape == (n,)
        assert f.attrs["env_id"] == "tictactoe" and f.attrs["obs_size"] == 29
        assert f.attrs["num_actions"] == 9 and f.attrs["legal_mask_offset"] == 18
        d = {k: f[k][()] for k in f}
    assert len(np.unique(d["episode_ids"])) == 40 and d["dones"].sum() == 40
    assert d["legal_masks"][np.arange(n), d["actions"]].all()
    assert not d["next_legal_masks"][d["dones"]].any()
    # Perfect play from both sides: every game is a draw, every move optimal.
    assert (d["outcomes"] == 0).all() and (d["rewards"] == 0).all()
    perfect = PerfectPlayer(game, np.random.default_rng(0))
    s = game.initial_state()
    for i in range(n):
        np.testing.assert_array_equal(d["states"][i], game.encode(s))
        values = perfect.action_values(s)
        assert values[int(d["actions"][i])] == max(values.values())
        s = game.apply(s, int(d["actions"][i]))
        np.testing.assert_array_equal(d["next_states"][i], game.encode(s))
        if d["dones"][i]:
            s = game.initial_state()


def test_jsonl_layout_with_epsilon_and_mcts_teacher(tmp_path):
    out = tmp_path / "c4.jsonl"
    arrays = generate(
        GenerateConfig(
            env_id="connect4", games=6, teacher="mcts:10", epsilon=0.5, output=out, seed=2, progress=False
        )
    )
    lines = out.read_text().splitlines()
    assert len(lines) == 6
    total = 0
    for i, line in enumerate(lines):
        ep = json.loads(line)
        assert ep["episode_id"] == i and ep["env_id"] == "connect4"
        steps = ep["steps"]
        total += len(steps)
        assert [s["done"] for s in steps] == [False] * (len(steps) - 1) + [True]
        for s in steps:
            assert len(s["observation"]) == 93 and len(s["legal_mask"]) == 7
            assert s["legal_mask"][s["action"]] == 1
        z = steps[-1]["reward"]
        assert steps[-1]["outcome"] == z and (len(steps) < 2 or steps[-2]["outcome"] == -z)
    assert total == len(arrays["actions"])


def test_output_is_readable_by_the_trainer(tmp_path):
    offline = pytest.importorskip("trainer.sources.offline_data")
    for name in ("t.h5", "t.jsonl"):
        out = tmp_path / name
        generate(
            GenerateConfig(env_id="tictactoe", games=10, teacher="random", output=out, seed=3, progress=False)
        )
        ds = offline.load_dataset(out, transitions=True)
        assert ds.spec.env_id == "tictactoe" and len(ds) > 0 and ds.num_episodes == 10


def test_bad_teacher_and_suffix_are_usage_errors(tmp_path, capsys):
    assert (
        main(
            [
                "--teacher",
                "perfect",
                "--env-id",
                "connect4",
                "--games",
                "1",
                "--output",
                str(tmp_path / "x.h5"),
            ]
        )
        == 2
    )
    with pytest.raises(SystemExit) as e:
        main(["--output", str(tmp_path / "x.csv")])
    assert e.value.code == 2


def test_c_puct_leaves_the_rollout_mcts_teacher_as_it_is(tmp_path):
    """The mcts teacher is the evaluator's rollout UCT: --c-puct is accepted and changes nothing."""

    def moves(c_puct: float) -> list[int]:
        cfg = GenerateConfig(
            env_id="connect4",
            games=2,
            teacher="mcts:8",
            output=tmp_path / f"{c_puct}.jsonl",
            seed=4,
            progress=False,
            c_puct=c_puct,
        )
        return generate(cfg)["actions"].tolist()

    assert moves(0.1) == moves(8.0)
