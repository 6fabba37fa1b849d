"""Players for the evaluator and the offline data generator, all choosing moves in batches.

`choose(states)` takes the positions of many games at once (all with this player to move),
so an MCTS or model player sends every game's leaves to one evaluator call.

Player specs on the command line: `random`, `perfect` (tic-tac-toe only), `mcts:SIMS`
(rollout MCTS, or model-guided when a model is given) and, for the model under test, `model`.
Any of them followed by `+epsilon:E` plays a uniformly random legal move with probability E
(`mcts:50+epsilon:0.3` is the behaviour policy of data generated with that teacher and epsilon).
`play_in_lockstep` plays many games at once with them (the evaluator, the data generator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from trainer.games import DRAW, Game, GameState
from trainer.games.tictactoe import LINES as TICTACTOE_LINES
from trainer.onnx_policy import OnnxPolicy, masked_softmax
from trainer.search.mcts import (
    LeafEvaluator,
    MCTSConfig,
    ObsEvaluator,
    RolloutEvaluator,
    search,
    select_action,
)


class Player(Protocol):
    name: str

    def choose(self, states: Sequence[GameState]) -> list[int]: ...


class PlayStopped(Exception):
    """`should_stop` said so between rounds of moves: the games in flight are abandoned."""


def play_in_lockstep(
    game: Game,
    players: Sequence[Player],
    to_play: Callable[[int, GameState], int],
    states: Sequence[GameState],
    on_move: Callable[[int, GameState, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[GameState]:
    """Play every game in `states` to its end and return the final states.

    In each round every player in turn makes one batched `choose` for all the unfinished
    games in which it is to move (`to_play(i, state)` is its index in `players`), so a model
    or MCTS player evaluates all those positions in one call. `on_move(i, state, action)`
    sees each move before it is played. `should_stop` is polled before every round, so a
    daemon that is shutting down does not wait for all the games (raises PlayStopped).
    """
    states = list(states)
    while any(not s.is_terminal for s in states):
        if should_stop is not None and should_stop():
            raise PlayStopped
        for seat, player in enumerate(players):
            # Recomputed per player: a game the previous player just finished gets no move.
            idx = [i for i, s in enumerate(states) if not s.is_terminal and to_play(i, s) == seat]
            if not idx:
                continue
            for i, a in zip(idx, player.choose([states[i] for i in idx])):
                if on_move is not None:
                    on_move(i, states[i], a)
                states[i] = game.apply(states[i], a)
    return states


class RandomPlayer:
    def __init__(self, game: Game, rng: np.random.Generator):
        self.game, self.rng, self.name = game, rng, "random"

    def choose(self, states: Sequence[GameState]) -> list[int]:
        return [int(self.rng.choice(self.game.legal_actions(s))) for s in states]


class EpsilonPlayer:
    """`player`'s moves, except that with probability `epsilon` a move is a uniformly random
    legal one, so generated data also covers positions the player would never reach."""

    def __init__(self, game: Game, player: Player, epsilon: float, rng: np.random.Generator):
        self.game, self.player, self.epsilon, self.rng = game, player, epsilon, rng
        self.name = f"{player.name}+epsilon:{epsilon}"

    def choose(self, states: Sequence[GameState]) -> list[int]:
        explore = self.rng.random(len(states)) < self.epsilon
        taught = [s for s, e in zip(states, explore) if not e]
        moves = iter(self.player.choose(taught) if taught else [])
        return [
            int(self.rng.choice(self.game.legal_actions(s))) if e else next(moves)
            for s, e in zip(states, explore)
        ]


class PerfectPlayer:
    """Exact minimax with a memo (tic-tac-toe has 5,478 positions); a random choice among the
    optimal moves, so games against it still vary. Among equal results it prefers the
    quickest win and the slowest loss."""

    def __init__(self, game: Game, rng: np.random.Generator):
        if game.spec.env_id != "tictactoe":
            raise ValueError(f"the perfect player only knows tictactoe, not {game.spec.env_id}")
        self.game, self.rng, self.name = game, rng, "perfect"
        self._memo: dict[tuple, float] = {}

    def value(self, state: GameState) -> float:
        """Side-to-move value, shrunk by depth (a win in 1 beats a win in 5)."""
        key = (state.board, state.to_move)
        v = self._memo.get(key)
        if v is None:
            if state.is_terminal:
                v = 0.0 if state.winner == DRAW else (1.0 if state.winner == state.to_move else -1.0)
            else:
                v = max(-0.99 * self.value(self.game.apply(state, a)) for a in self.game.legal_actions(state))
            self._memo[key] = v
        return v

    def action_values(self, state: GameState) -> dict[int, float]:
        return {a: -0.99 * self.value(self.game.apply(state, a)) for a in self.game.legal_actions(state)}

    def choose(self, states: Sequence[GameState]) -> list[int]:
        out = []
        for s in states:
            values = self.action_values(s)
            best = max(values.values())
            out.append(int(self.rng.choice([a for a, v in values.items() if v >= best - 1e-9])))
        return out


def tictactoe_rule_move(board: Sequence[int], me: int) -> int:
    """A deterministic tic-tac-toe teacher: win, else block, else centre, corners, first free.

    Deterministic on purpose (unlike PerfectPlayer, which picks among equal moves at
    random), so imitation of it can reach 100% accuracy: the offline modes' yardstick.
    """
    for player in (me, 3 - me):
        for line in TICTACTOE_LINES:
            marks = [board[i] for i in line]
            if marks.count(player) == 2 and marks.count(0) == 1:
                return line[marks.index(0)]
    for cell in (4, 0, 2, 6, 8):
        if board[cell] == 0:
            return cell
    return list(board).index(0)


# The rollout opponent is the literature's "MCTS-N" (OpenSpiel's MCTSBot as its AlphaZero
# evaluation builds it): UCT with c = 2, one random rollout per leaf, MCTS-Solver, so that
# results against it compare with published ones (benchmarks/mcts_calibration.py checks it).
ROLLOUT_SEARCH = dict(selection="uct", c_uct=2.0, solve=True)


class MCTSPlayer:
    """MCTS with random-rollout leaves (UCT + solver, `ROLLOUT_SEARCH`) or a model's priors
    and values (PUCT with `c_puct`). At temperature 0 it plays the most visited move (the
    solver's choice without a model); at T > 0 it samples from visits^(1/T) over legal moves,
    the search counterpart of the raw policy's softmax(logits / T)."""

    def __init__(
        self,
        game: Game,
        sims: int,
        rng: np.random.Generator,
        evaluator: LeafEvaluator | None = None,
        c_puct: float = 1.5,
        name: str | None = None,
        temperature: float = 0.0,
    ):
        self.game, self.rng, self.temperature = game, rng, temperature
        self.cfg = MCTSConfig(sims=sims, c_puct=c_puct, **(ROLLOUT_SEARCH if evaluator is None else {}))
        self.evaluator = evaluator if evaluator is not None else RolloutEvaluator(rng)
        self.name = name or f"mcts:{sims}"

    def choose(self, states: Sequence[GameState]) -> list[int]:
        results = search(self.game, list(states), self.evaluator, self.cfg, self.rng, add_noise=False)
        if self.cfg.solve and self.temperature <= 0:
            return [r.best_action(self.rng) for r in results]
        sample_plies = math.inf if self.temperature > 0 else 0  # sample every move, or none
        return [
            select_action(
                r.visits, self.game.legal_mask(s), s.ply, sample_plies, self.rng, self.temperature or 1.0
            )
            for s, r in zip(states, results)
        ]


class PolicyPlayer:
    """The model's raw policy: greedy over legal moves at temperature 0, else sampled from
    softmax(logits / T) over legal moves."""

    def __init__(
        self,
        game: Game,
        policy: OnnxPolicy,
        rng: np.random.Generator,
        temperature: float = 0.0,
        name: str = "model",
    ):
        self.game, self.policy, self.rng, self.temperature, self.name = game, policy, rng, temperature, name

    def choose(self, states: Sequence[GameState]) -> list[int]:
        obs = np.stack([self.game.encode(s) for s in states])
        masks = self.game.spec.legal_masks(obs)
        logits, _ = self.policy.run(obs)
        out = []
        for row, legal in zip(logits, masks):
            if self.temperature <= 0:
                scores = np.where(legal, row, -np.inf)
                out.append(int(self.rng.choice(np.flatnonzero(scores == scores.max()))))
            else:
                p = masked_softmax(row[None], legal[None], self.temperature)[0]
                out.append(int(self.rng.choice(len(p), p=p)))
        return out


EPSILON_SUFFIX = "+epsilon:"


def split_epsilon(spec: str) -> tuple[str, float | None]:
    """`SPEC+epsilon:E` -> (SPEC, E); a spec without the suffix -> (spec, None)."""
    base, found, arg = spec.partition(EPSILON_SUFFIX)
    if not found:
        return spec, None
    try:
        epsilon = float(arg)
    except ValueError:
        epsilon = math.nan
    if not 0.0 <= epsilon <= 1.0:  # NaN fails too
        raise ValueError(f"bad player {spec!r}: expected SPEC{EPSILON_SUFFIX}E with E a number in [0, 1]")
    return base, epsilon


def check_baseline_spec(v: str, allow_model: bool = False) -> str:
    """A baseline player's spec: random, perfect or mcts:SIMS, optionally +epsilon:E."""
    base, _ = split_epsilon(v)
    kind, _, arg = base.partition(":")
    if (kind in ("random", "perfect") and not arg) or (kind == "mcts" and arg.isdigit() and int(arg) > 0):
        return v
    expected = "random, perfect or mcts:SIMS (SIMS a positive integer), optionally followed by +epsilon:E"
    raise ValueError(f"expected {expected}" + (", or model:PATH" if allow_model else ""))


def make_player(
    spec: str,
    game: Game,
    rng: np.random.Generator,
    policy: OnnxPolicy | None = None,
    temperature: float = 0.0,
    c_puct: float = 1.5,
) -> Player:
    """A player from its command-line spec; `model` and `model-mcts:SIMS` need `policy`.
    `temperature` applies to the model and MCTS players (0 = their best move);
    `SPEC+epsilon:E` wraps SPEC's player in an EpsilonPlayer."""
    base, epsilon = split_epsilon(spec)
    if epsilon is not None:
        inner = make_player(base, game, rng, policy, temperature, c_puct)
        return EpsilonPlayer(game, inner, epsilon, rng)
    kind, _, arg = spec.partition(":")
    if kind == "random":
        return RandomPlayer(game, rng)
    if kind == "perfect":
        return PerfectPlayer(game, rng)
    if kind in ("mcts", "model-mcts"):
        try:
            sims = int(arg)
        except ValueError:
            raise ValueError(f"bad player {spec!r}: expected {kind}:SIMS with an integer SIMS") from None
        if sims < 1:
            raise ValueError(f"bad player {spec!r}: SIMS must be >= 1")
        if kind == "model-mcts":
            if policy is None:
                raise ValueError("model-mcts needs a model")
            return MCTSPlayer(
                game,
                sims,
                rng,
                ObsEvaluator(policy.evaluate),
                c_puct,
                name=f"model+mcts:{sims}",
                temperature=temperature,
            )
        return MCTSPlayer(game, sims, rng, c_puct=c_puct, temperature=temperature)
    if kind == "model":
        if policy is None:
            raise ValueError("the model player needs a model")
        return PolicyPlayer(game, policy, rng, temperature)
    raise ValueError(f"unknown player {spec!r}; expected random, perfect, mcts:SIMS, optionally +epsilon:E")
