"""`python -m actor_stub.generate`: offline datasets from a teacher, for imitation / BC / IQL / CQL.

    python -m actor_stub.generate --env-id tictactoe --games 5000 --teacher perfect \
        --epsilon 0.1 --output data/train.h5

Teachers: `random`, `perfect` (tic-tac-toe minimax), `mcts:SIMS` (random-rollout MCTS).
With probability --epsilon a move is a uniformly random legal move instead of the teacher's,
so the data also covers positions the teacher would never reach.

HDF5 (.h5/.hdf5): one row per move. `states` float32 [N, obs], `actions` int64 [N],
`legal_masks` bool [N, A], `rewards` float32 (mover's view, +1 for the winning move), `dones`
bool, `next_states`, `next_legal_masks`, `episode_ids` int64, `outcomes` float32 (the game's
result from the mover's view); attributes env_id, obs_size, num_actions, legal_mask_offset,
board_width, board_height, player_count.
JSONL (.jsonl): one game per line, {"episode_id", "env_id", "steps": [{"observation",
"action", "reward", "done", "legal_mask", "outcome"}]}.
The file appears atomically when complete.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainer.atomic_files import atomic_path
from trainer.config.loader import load_config
from trainer.games import KNOWN_ENV_IDS, Game, GameState, get_game
from trainer.replay.writer import outcome_for_ply
from trainer.search.players import EpsilonPlayer, make_player, play_in_lockstep


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env_id: str = Field(
        "tictactoe",
        min_length=1,
        description="Game (one of the games in trainer/games: " + ", ".join(KNOWN_ENV_IDS) + ").",
    )
    games: int = Field(1000, ge=1, description="Games to generate.")
    teacher: str = Field("random", description="random, perfect (tictactoe only) or mcts:SIMS.")
    epsilon: float = Field(
        0.0, ge=0, le=1, description="Probability of a uniformly random legal move instead of the teacher's."
    )
    output: Path = Field(
        Path("data/train.h5"), description="Output file: .h5/.hdf5 (HDF5) or .jsonl (JSONL)."
    )
    seed: int | None = Field(None, description="Random seed (unset = from the OS).")
    batch_games: int = Field(
        64, ge=1, le=65536, description="Games played at once (an MCTS teacher searches them in one batch)."
    )
    c_puct: float = Field(
        1.5,
        gt=0,
        description="Ignored: the mcts teacher is rollout UCT (c = 2) with MCTS-Solver, like OpenSpiel's MCTSBot (the evaluator's mcts:SIMS); accepted so older command lines still run.",
    )
    progress: bool = Field(True, description="Progress line with rate and ETA on stderr.")

    @field_validator("output")
    @classmethod
    def _suffix(cls, v: Path) -> Path:
        if v.suffix.lower() not in (".h5", ".hdf5", ".jsonl"):
            raise ValueError("output must end in .h5, .hdf5 or .jsonl")
        return v


@dataclass
class Episode:
    states: list[GameState] = field(default_factory=list)  # before each move
    actions: list[int] = field(default_factory=list)


class Progress:
    """A single rewritten stderr line: done/total, rate, ETA (no dependency)."""

    def __init__(self, total: int, enabled: bool, what: str = "games"):
        self.total, self.enabled, self.what = total, enabled, what
        self.t0 = self.last = time.monotonic()
        self.shown = -1

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last, self.shown = now, done
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        sys.stderr.write(
            f"\r{done}/{self.total} {self.what} ({100 * done / self.total:.0f}%), {rate:.1f} {self.what}/s, ETA {eta:.0f}s   "
        )
        sys.stderr.flush()

    def close(self, done: int) -> None:
        if self.shown != done:
            self.update(done, force=True)
        if self.enabled:
            sys.stderr.write("\n")


def play_episodes(cfg: GenerateConfig, game: Game) -> list[Episode]:
    rng = np.random.default_rng(cfg.seed)
    player = EpsilonPlayer(game, make_player(cfg.teacher, game, rng, c_puct=cfg.c_puct), cfg.epsilon, rng)
    progress = Progress(cfg.games, cfg.progress)
    episodes: list[Episode] = []
    while len(episodes) < cfg.games:
        n = min(cfg.batch_games, cfg.games - len(episodes))
        batch = [Episode() for _ in range(n)]

        def record(i: int, state: GameState, action: int, batch: list[Episode] = batch) -> None:
            batch[i].states.append(state)
            batch[i].actions.append(action)

        # One player for both sides: the teacher plays the whole game.
        play_in_lockstep(game, (player,), lambda _i, _s: 0, [game.initial_state()] * n, on_move=record)
        episodes.extend(batch)
        progress.update(len(episodes))
    progress.close(len(episodes))
    return episodes


def episode_arrays(game: Game, episodes: list[Episode]) -> dict[str, np.ndarray]:
    spec = game.spec
    cols: dict[str, list] = {
        k: [] for k in ("states", "actions", "rewards", "dones", "next_states", "episode_ids", "outcomes")
    }
    for ep_id, ep in enumerate(episodes):
        t = len(ep.actions)
        after = ep.states[1:] + [game.apply(ep.states[-1], ep.actions[-1])]
        z = game.reward_for_mover(ep.states[-1], after[-1])
        for k, (s, act, nxt) in enumerate(zip(ep.states, ep.actions, after)):
            cols["states"].append(game.encode(s))
            cols["actions"].append(act)
            cols["rewards"].append(game.reward_for_mover(s, nxt))
            cols["dones"].append(nxt.is_terminal)
            cols["next_states"].append(game.encode(nxt))
            cols["episode_ids"].append(ep_id)
            cols["outcomes"].append(outcome_for_ply(k, t, z))
    states = np.asarray(cols["states"], dtype=np.float32)
    next_states = np.asarray(cols["next_states"], dtype=np.float32)
    return {
        "states": states,
        "actions": np.asarray(cols["actions"], dtype=np.int64),
        "legal_masks": spec.legal_masks(states),
        "rewards": np.asarray(cols["rewards"], dtype=np.float32),
        "dones": np.asarray(cols["dones"], dtype=bool),
        "next_states": next_states,
        "next_legal_masks": spec.legal_masks(next_states),
        "episode_ids": np.asarray(cols["episode_ids"], dtype=np.int64),
        "outcomes": np.asarray(cols["outcomes"], dtype=np.float32),
    }


def write_hdf5(path: Path, game: Game, arrays: dict[str, np.ndarray], cfg: GenerateConfig) -> None:
    import h5py

    spec = game.spec
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, arr in arrays.items():
                f.create_dataset(name, data=arr, compression="gzip" if arr.ndim == 2 else None)
            for k in (
                "env_id",
                "obs_size",
                "num_actions",
                "legal_mask_offset",
                "board_width",
                "board_height",
                "player_count",
            ):
                f.attrs[k] = getattr(spec, k)
            f.attrs["teacher"] = cfg.teacher
            f.attrs["epsilon"] = cfg.epsilon
            f.attrs["games"] = cfg.games


def write_jsonl(path: Path, game: Game, arrays: dict[str, np.ndarray]) -> None:
    ids = arrays["episode_ids"]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for s, e in zip(starts, ends):
            steps = [
                {
                    "observation": arrays["states"][i].tolist(),
                    "action": int(arrays["actions"][i]),
                    "reward": float(arrays["rewards"][i]),
                    "done": bool(arrays["dones"][i]),
                    "legal_mask": arrays["legal_masks"][i].astype(int).tolist(),
                    "outcome": float(arrays["outcomes"][i]),
                }
                for i in range(s, e)
            ]
            f.write(
                json.dumps({"episode_id": int(ids[s]), "env_id": game.spec.env_id, "steps": steps}) + "\n"
            )


def generate(cfg: GenerateConfig) -> dict[str, np.ndarray]:
    game = get_game(cfg.env_id)
    make_player(cfg.teacher, game, np.random.default_rng(0))  # fail fast on a bad teacher
    episodes = play_episodes(cfg, game)
    arrays = episode_arrays(game, episodes)
    if cfg.output.suffix.lower() == ".jsonl":
        write_jsonl(cfg.output, game, arrays)
    else:
        write_hdf5(cfg.output, game, arrays, cfg)
    return arrays


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(
        GenerateConfig,
        argv,
        prog="python -m actor_stub.generate",
        description=__doc__.split("\n\n")[0],
        env_prefix="GENERATE_",
    )
    t0 = time.monotonic()
    try:
        arrays = generate(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(arrays["actions"])
    print(
        f"wrote {cfg.games} games, {n} moves to {cfg.output} in {time.monotonic() - t0:.1f}s", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
