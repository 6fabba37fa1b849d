"""A fixed tic-tac-toe teacher and writers of its games as HDF5 / JSONL, for the offline tests.

The teacher is a deterministic rule (win, else block, else centre, else the first free
corner, else the first free cell), so a learner can reach high accuracy on its moves.
Games open with 0-2 seeded random plies so the data covers more than one line of play.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from trainer.games import get_game
from trainer.search.players import tictactoe_rule_move

GAME = get_game("tictactoe")


def play_games(n: int, seed: int = 0, random_plies: int = 2) -> list[list[dict]]:
    """Each game: plies {obs, action, reward, done, legal, next_obs, next_legal}."""
    rng = np.random.default_rng(seed)
    games = []
    for _ in range(n):
        state, plies = GAME.initial_state(), []
        opening = int(rng.integers(0, random_plies + 1))
        while not state.is_terminal:
            legal = GAME.legal_mask(state)
            if state.ply < opening:
                action = int(rng.choice(np.flatnonzero(legal)))
            else:
                action = tictactoe_rule_move(state.board, state.to_move)
            after = GAME.apply(state, action)
            plies.append(
                {
                    "obs": GAME.encode(state),
                    "action": action,
                    "legal": legal,
                    "reward": GAME.reward_for_mover(state, after),
                    "done": after.is_terminal,
                    "next_obs": GAME.encode(after),
                    "next_legal": GAME.legal_mask(after),
                }
            )
            state = after
        games.append(plies)
    return games


def write_jsonl(path: Path, games: list[list[dict]], legal: bool = True) -> Path:
    with open(path, "w") as f:
        for i, plies in enumerate(games):
            steps = []
            for p in plies:
                step = {
                    "observation": p["obs"].tolist(),
                    "action": p["action"],
                    "reward": p["reward"],
                    "done": p["done"],
                }
                if legal:
                    step["legal_mask"] = p["legal"].astype(int).tolist()
                steps.append(step)
            f.write(json.dumps({"episode_id": f"g{i}", "steps": steps}) + "\n")
    return path


def write_hdf5(
    path: Path,
    games: list[list[dict]],
    *,
    d4rl: bool = False,
    with_outcomes: bool = True,
    attrs: bool = True,
    **overrides,
) -> Path:
    rows = [p for g in games for p in g]
    arrays = {
        "states": np.stack([p["obs"] for p in rows]).astype(np.float32),
        "actions": np.asarray([p["action"] for p in rows], dtype=np.int64),
        "legal_masks": np.stack([p["legal"] for p in rows]),
        "rewards": np.asarray([p["reward"] for p in rows], dtype=np.float32),
        "dones": np.asarray([p["done"] for p in rows]),
    }
    if with_outcomes:
        z = []
        for g in games:
            last = g[-1]["reward"]
            z += [last if (len(g) - 1 - k) % 2 == 0 else -last for k in range(len(g))]
        arrays["outcomes"] = np.asarray(z, dtype=np.float32)
    if d4rl:  # D4RL spellings, no legal masks: the known game's observation supplies them
        arrays["observations"] = arrays.pop("states")
        arrays["terminals"] = arrays.pop("dones")
        arrays["timeouts"] = np.zeros(len(rows), dtype=bool)
        arrays["next_observations"] = np.stack([p["next_obs"] for p in rows]).astype(np.float32)
        del arrays["legal_masks"]
    arrays.update(overrides)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            if v is not None:
                f.create_dataset(k, data=v)
        if attrs:
            f.attrs["env_id"] = "tictactoe"
    return path


def test_teacher_games_are_legal_and_varied():
    games = play_games(50, seed=1)
    for plies in games:
        assert plies[-1]["done"] and not any(p["done"] for p in plies[:-1])
        for p in plies:
            assert p["legal"][p["action"]]
    openings = {tuple(p["action"] for p in g[:3]) for g in games}
    assert len(openings) > 10
