"""Playing a model against a baseline opponent and summarising the result.

`evaluate_model` is the API the daemon's eval hook calls from a training thread: it uses
onnxruntime and numpy only (never torch), plays all games at once so a model player makes one
batched call per move round, and alternates who moves first (even games: model first).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from trainer.atomic_files import finite_or_none
from trainer.evaluator.sprt import PAIR_SCORES, SprtResult, elo_estimate, pentanomial, sprt
from trainer.games import DRAW, Game, GameState, get_game
from trainer.model.contract import read_model_metadata
from trainer.onnx_policy import OnnxPolicy
from trainer.search.players import Player, make_player, play_in_lockstep

# Games between SPRT checks: even, so every batch is whole colour-swapped pairs, and large
# enough that a model player still batches its evaluations across games.
SPRT_BATCH_GAMES = 16


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
    elo: float = 0.0  # logistic Elo of the score; +-inf after only wins or only losses
    elo_ci: tuple[float, float] = (-math.inf, math.inf)  # 95%
    sprt: SprtResult | None = None
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
        """JSON-ready: an infinite Elo bound is null."""
        d = asdict(self)
        d["ci"] = list(self.ci)
        d["elo_ci"] = list(self.elo_ci)
        d["sprt"] = self.sprt.to_dict() if self.sprt is not None else None
        d.update(win_rate=self.win_rate, draw_rate=self.draw_rate, loss_rate=self.loss_rate, score=self.score)
        return finite_or_none(d)


def wilson_interval(score: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval, with a draw counting as half a win (a common approximation)."""
    if n == 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (score + z * z / (2 * n)) / denom
    half = z * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def pair_results(records: list[GameRecord]) -> list[tuple[int, int]]:
    """The results of games 2k and 2k+1, which `play_games` plays with colours swapped."""
    return [(records[i].result, records[i + 1].result) for i in range(0, len(records) - 1, 2)]


def _elo(records: list[GameRecord]):
    """Scored by colour-swapped pairs when the games pair up, else game by game."""
    if len(records) % 2 == 0:
        return elo_estimate(pentanomial(pair_results(records)), PAIR_SCORES)
    counts = [sum(r.result == k for r in records) for k in (-1, 0, 1)]
    return elo_estimate(counts, np.array([0.0, 0.5, 1.0]))


def play_games(
    game: Game,
    model: Player,
    opponent: Player,
    games: int,
    keep_moves: bool = False,
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

    finals = play_in_lockstep(
        game,
        (model, opponent),
        to_play,
        [game.initial_state()] * games,
        on_move=keep if keep_moves else None,
        should_stop=should_stop,
    )
    records = []
    for i, s in enumerate(finals):
        model_colour = 1 if model_first[i] else 2
        result = 0 if s.winner == DRAW else (1 if s.winner == model_colour else -1)
        records.append(GameRecord(model_first[i], result, s.ply, moves[i], s))
    return records


def play_match(
    game: Game,
    model: Player,
    opponent: Player,
    games: int,
    sprt_elo: tuple[float, float] | None = None,
    alpha: float = 0.05,
    beta: float = 0.05,
    keep_moves: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[GameRecord], SprtResult | None]:
    """`games` games, or with `sprt_elo` (elo0, elo1) batches of colour-swapped pairs until the
    SPRT accepts a hypothesis or `games` are played; the test's final state comes back too."""
    records: list[GameRecord] = []
    verdict: SprtResult | None = None
    while len(records) < games:
        batch = games - len(records) if sprt_elo is None else min(SPRT_BATCH_GAMES, games - len(records))
        records += play_games(game, model, opponent, batch, keep_moves=keep_moves, should_stop=should_stop)
        if sprt_elo is not None:
            verdict = sprt(pair_results(records), sprt_elo[0], sprt_elo[1], alpha, beta)
            if verdict.decision != "continue":
                break
    return records, verdict


def summarise(
    records: list[GameRecord],
    model: str,
    opponent: str,
    env_id: str,
    model_step: int | None,
    elapsed_s: float = 0.0,
    sprt_result: SprtResult | None = None,
) -> EvalResult:
    def count(result: int, first: bool | None = None) -> int:
        return sum(r.result == result and (first is None or r.model_first == first) for r in records)

    n = len(records)
    wins, draws, losses = count(1), count(0), count(-1)
    score = (wins + 0.5 * draws) / n if n else 0.0
    elo = _elo(records)
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
        elo=elo.elo,
        elo_ci=elo.ci,
        sprt=sprt_result,
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
    sprt_elo: tuple[float, float] | None = None,
    alpha: float = 0.05,
    beta: float = 0.05,
) -> EvalResult:
    """Play `games` games of the model at `model_path` against `opponent` (random, perfect,
    mcts:SIMS, or model:PATH, another ONNX model playing exactly as the model does). The
    model plays its raw policy, or searches with `sims` MCTS simulations guided by the model
    when `sims` > 0; `temperature` 0 plays its best move in both modes.

    With `sprt_elo` (elo0, elo1) the games are played in batches of colour-swapped pairs and
    stop as soon as the SPRT accepts a hypothesis, or at `games`."""
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
    model_player = make_player(
        model_spec, game, model_rng, policy=policy, temperature=temperature, c_puct=c_puct
    )
    kind, _, opp_path = opponent.partition(":")
    if kind == "model":
        opp_policy = OnnxPolicy(opp_path, threads=threads, expected_env_id=env_id, spec=spec)
        opp_player = make_player(
            model_spec, game, opp_rng, policy=opp_policy, temperature=temperature, c_puct=c_puct
        )
        opp_player.name = f"model:{Path(opp_path).name}"
    else:
        opp_player = make_player(opponent, game, opp_rng, c_puct=c_puct)
    match = Match(game, model_player, opp_player, games, sprt_elo, alpha, beta, records_out, should_stop)
    return match.play(str(model_path), policy.step, t0)


def evaluate_player(
    player: str,
    env_id: str,
    opponent: str = "random",
    games: int = 100,
    seed: int | None = None,
    *,
    c_puct: float = 1.5,
    records_out: list[GameRecord] | None = None,
    sprt_elo: tuple[float, float] | None = None,
    alpha: float = 0.05,
    beta: float = 0.05,
) -> EvalResult:
    """`evaluate_model` for a player spec in the model's seat instead of an ONNX model, e.g.
    the behaviour policy of generated data (`mcts:50+epsilon:0.3`), scored exactly as the
    models trained on that data are."""
    if games < 1:
        raise ValueError("games must be >= 1")
    t0 = time.monotonic()
    game = get_game(env_id)
    root = np.random.default_rng(seed)
    player_rng, opp_rng = (np.random.default_rng(s) for s in root.bit_generator.seed_seq.spawn(2))
    first = make_player(player, game, player_rng, c_puct=c_puct)
    second = make_player(opponent, game, opp_rng, c_puct=c_puct)
    match = Match(game, first, second, games, sprt_elo, alpha, beta, records_out)
    return match.play(first.name, None, t0)


@dataclass
class Match:
    """A match as `evaluate_model` and `evaluate_player` play and summarise it."""

    game: Game
    model: Player
    opponent: Player
    games: int
    sprt_elo: tuple[float, float] | None = None
    alpha: float = 0.05
    beta: float = 0.05
    records_out: list[GameRecord] | None = None
    should_stop: Callable[[], bool] | None = None

    def play(self, model_name: str, model_step: int | None, t0: float) -> EvalResult:
        records, verdict = play_match(
            self.game,
            self.model,
            self.opponent,
            self.games,
            self.sprt_elo,
            self.alpha,
            self.beta,
            keep_moves=self.records_out is not None,
            should_stop=self.should_stop,
        )
        if self.records_out is not None:
            self.records_out.extend(records)
        elapsed = time.monotonic() - t0
        env_id = self.game.spec.env_id
        return summarise(records, model_name, self.opponent.name, env_id, model_step, elapsed, verdict)
