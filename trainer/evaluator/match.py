"""Playing a model against a baseline opponent and summarising the result.

`evaluate_model` is the API the daemon's eval hook calls from a training thread: it uses
onnxruntime and numpy only (never torch), plays all games at once so a model player makes one
batched call per move round, and alternates who moves first (even games: model first).
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from trainer.games import DRAW, Game, GameState, get_game
from trainer.model.contract import read_model_metadata
from trainer.onnx_policy import OnnxPolicy
from trainer.search.players import Player, make_player, play_in_lockstep


@dataclass
class GameRecord:
    model_first: bool
    result: int  # +1 model won, 0 draw, -1 model lost
    length: int  # plies
    moves: list[int] = field(default_factory=list)
    final: GameState | None = None


@dataclass
class EvalResult:
    model: str
    opponent: str
    env_id: str
    model_step: int | None
    games_played: int
    wins: int
    draws: int
    losses: int
    wins_as_first: int
    wins_as_second: int
    draws_as_first: int
    draws_as_second: int
    losses_as_first: int
    losses_as_second: int
    avg_game_length: float
    ci: tuple[float, float]  # 95% Wilson interval on the model's score
    elapsed_s: float = 0.0
    timestamp: float = field(default_factory=time.time)

    @property
    def win_rate(self) -> float:
        return self.wins / self.games_played if self.games_played else 0.0

    @property
    def draw_rate(self) -> float:
        return self.draws / self.games_played if self.games_played else 0.0

    @property
    def loss_rate(self) -> float:
        return self.losses / self.games_played if self.games_played else 0.0

    @property
    def score(self) -> float:
        """(wins + draws / 2) / games: 1 always wins, 0.5 even."""
        return (self.wins + 0.5 * self.draws) / self.games_played if self.games_played else 0.0

    def to_eval_history_entry(self, step: int) -> dict:
        """A `stats.json` `eval_history` entry (docs/contract.md section 4): ints stay ints."""
        return {
            "step": int(step),
            "win_rate": float(self.win_rate),
            "draw_rate": float(self.draw_rate),
            "loss_rate": float(self.loss_rate),
            "games_played": int(self.games_played),
            "avg_game_length": float(self.avg_game_length),
            "timestamp": float(self.timestamp),
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci)
        d.update(win_rate=self.win_rate, draw_rate=self.draw_rate, loss_rate=self.loss_rate, score=self.score)
        return d


def wilson_interval(score: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval, with a draw counting as half a win (a common approximation)."""
    if n == 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (score + z * z / (2 * n)) / denom
    half = z * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def play_games(
    game: Game, model: Player, opponent: Player, games: int, keep_moves: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[GameRecord]:
    """All games in lockstep (`play_in_lockstep`); game i has the model moving first when i is
    even. `should_stop` is polled before every round of moves (raises PlayStopped)."""
    model_first = [i % 2 == 0 for i in range(games)]
    moves: list[list[int]] = [[] for _ in range(games)]

    def to_play(i: int, s: GameState) -> int:  # 0: the model, 1: the opponent
        return 0 if (s.ply % 2 == 0) == model_first[i] else 1

    def keep(i: int, _s: GameState, a: int) -> None:
        moves[i].append(a)

    finals = play_in_lockstep(game, (model, opponent), to_play, [game.initial_state()] * games,
                              on_move=keep if keep_moves else None, should_stop=should_stop)
    records = []
    for i, s in enumerate(finals):
        model_colour = 1 if model_first[i] else 2
        result = 0 if s.winner == DRAW else (1 if s.winner == model_colour else -1)
        records.append(GameRecord(model_first[i], result, s.ply, moves[i], s))
    return records


def summarise(
    records: list[GameRecord], model: str, opponent: str, env_id: str, model_step: int | None, elapsed_s: float = 0.0
) -> EvalResult:
    def count(result: int, first: bool | None = None) -> int:
        return sum(r.result == result and (first is None or r.model_first == first) for r in records)

    n = len(records)
    wins, draws, losses = count(1), count(0), count(-1)
    score = (wins + 0.5 * draws) / n if n else 0.0
    return EvalResult(
        model=model,
        opponent=opponent,
        env_id=env_id,
        model_step=model_step,
        games_played=n,
        wins=wins,
        draws=draws,
        losses=losses,
        wins_as_first=count(1, True),
        wins_as_second=count(1, False),
        draws_as_first=count(0, True),
        draws_as_second=count(0, False),
        losses_as_first=count(-1, True),
        losses_as_second=count(-1, False),
        avg_game_length=sum(r.length for r in records) / n if n else 0.0,
        ci=wilson_interval(score, n),
        elapsed_s=elapsed_s,
    )


def resolve_env_id(model_path: str | Path, env_id: str | None) -> str:
    if env_id:
        return env_id
    found = read_model_metadata(model_path).get("env_id")
    if found:
        return found
    raise ValueError(f"{Path(model_path).name} has no env_id in its metadata; pass --env-id")


def spec_from_db(db: str | Path, env_id: str):
    """Shapes from the replay DB's game_metadata (read-only), checked against our rules."""
    from trainer.replay.reader import sqlite_ro_uri
    from trainer.replay.schema import read_game_spec

    conn = sqlite3.connect(sqlite_ro_uri(db), uri=True, timeout=5.0)
    try:
        return read_game_spec(conn, env_id)
    finally:
        conn.close()


def evaluate_model(
    model_path: str | Path,
    env_id: str | None = None,
    opponent: str = "random",
    games: int = 100,
    seed: int | None = None,
    *,
    temperature: float = 0.0,
    sims: int = 0,
    threads: int = 1,
    db: str | Path | None = None,
    c_puct: float = 1.5,
    records_out: list[GameRecord] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Play `games` games of the model at `model_path` against `opponent` (random, perfect,
    mcts:SIMS). The model plays its raw policy, or searches with `sims` MCTS simulations
    guided by the model when `sims` > 0; `temperature` 0 plays its best move in both modes."""
    if games < 1:
        raise ValueError("games must be >= 1")
    t0 = time.monotonic()
    env_id = resolve_env_id(model_path, env_id)
    game = get_game(env_id)
    spec = game.spec
    if db is not None:
        db_spec = spec_from_db(db, env_id)
        if db_spec != spec:
            raise ValueError(f"game_metadata of {env_id} in {db} ({db_spec}) differs from the rules' {spec}")
    policy = OnnxPolicy(model_path, threads=threads, expected_env_id=env_id, spec=spec)

    root = np.random.default_rng(seed)
    model_rng, opp_rng = (np.random.default_rng(s) for s in root.bit_generator.seed_seq.spawn(2))
    model_spec = f"model-mcts:{sims}" if sims > 0 else "model"
    model_player = make_player(model_spec, game, model_rng, policy=policy, temperature=temperature, c_puct=c_puct)
    opp_player = make_player(opponent, game, opp_rng, c_puct=c_puct)
    records = play_games(game, model_player, opp_player, games, keep_moves=records_out is not None,
                         should_stop=should_stop)
    if records_out is not None:
        records_out.extend(records)
    return summarise(records, str(model_path), opp_player.name, env_id, policy.step, time.monotonic() - t0)
