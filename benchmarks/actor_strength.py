"""Strength of actor settings: the actor's own self-play moves under two settings, one model.

    python benchmarks/actor_strength.py --model c4.onnx --new sims=16,search=gumbel --old sims=50 --games 200
    python benchmarks/actor_strength.py --model c4.onnx --new reuse_tree=true --sprt -20,0 --games 600

Both sides search with the model as the actor does (`actor_stub.selfplay.search_moves`: root
noise, the temperature plies, subtree reuse, Gumbel root search, the evaluation cache, the
int8 copy), so
the match says whether a cheaper setting still plays as strongly as the one it replaces.
Settings not given are the actor's settings before the per-game defaults
(`actor_bench.TODAY`). Colours alternate; the result is the new
settings' score with its 95% interval and the Elo difference of colour-swapped pairs, and
with --sprt ELO0,ELO1 the games stop once the test decides.

With subtree reuse a side keeps the subtree of the position its opponent's reply reached
(two plies below the root it searched).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from actor_bench import parse_settings, settings_label  # noqa: E402

from actor_stub.config import ActorConfig  # noqa: E402
from actor_stub.selfplay import search_moves  # noqa: E402
from trainer.evaluator.match import play_match, summarise  # noqa: E402
from trainer.evaluator.sprt import parse_elo_bounds  # noqa: E402
from trainer.games import Game, GameState, get_game  # noqa: E402
from trainer.onnx_policy import OnnxPolicy  # noqa: E402
from trainer.search.mcts import CachedEvaluator, LeafEvaluator, MCTSConfig, Node, ObsEvaluator  # noqa: E402


class ActorSearchPlayer:
    """Plays the actor's searched move (`search_moves`) under one ActorConfig."""

    def __init__(
        self,
        game: Game,
        policies: dict[bool, OnnxPolicy],
        settings: dict[str, Any],
        rng: np.random.Generator,
    ):
        self.cfg = ActorConfig(env_id=game.spec.env_id, **settings)
        policy = policies[self.cfg.int8]
        self.game, self.rng, self.name = game, rng, settings_label(settings)
        self.mcts = MCTSConfig(
            sims=self.cfg.sims,
            c_puct=self.cfg.c_puct,
            dirichlet_alpha=self.cfg.dirichlet_alpha,
            dirichlet_weight=self.cfg.dirichlet_weight,
            temperature_plies=self.cfg.temperature_plies,
        )
        evaluator: LeafEvaluator = ObsEvaluator(policy.evaluate)
        if self.cfg.eval_cache > 0:
            evaluator = CachedEvaluator(evaluator, self.cfg.eval_cache)
        self.evaluator = evaluator
        self.kept: dict[tuple, Node] = {}  # positions after the opponent's reply -> subtree

    def choose(self, states: Sequence[GameState]) -> list[int]:
        trees = [self.kept.get((s.board, s.to_move)) for s in states]
        moves = search_moves(
            self.game, list(states), [self.evaluator] * len(states), trees, self.cfg, self.mcts, self.rng
        )
        self.kept = {
            (grandchild.state.board, grandchild.state.to_move): grandchild
            for m in moves
            if m.subtree is not None
            for grandchild in m.subtree.children.values()
            if grandchild is not None
        }
        return [m.action for m in moves]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="ONNX model both sides search with")
    ap.add_argument("--env-id", default="connect4")
    ap.add_argument("--new", default="", help="settings under test, e.g. sims=16,search=gumbel")
    ap.add_argument("--old", default="", help="the baseline (default: today's settings)")
    ap.add_argument("--games", type=int, default=200, help="games (at most, with --sprt)")
    ap.add_argument("--sprt", default=None, help="ELO0,ELO1: stop when the SPRT decides")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    game = get_game(args.env_id)
    rng = np.random.default_rng(args.seed)
    new, old = parse_settings(args.new), parse_settings(args.old)
    # One load per int8 setting: each side searches with the copy its settings name, even on
    # a CPU where the actor would drop it as slower: this measures play, not speed.
    policies = {
        int8: OnnxPolicy(args.model, threads=1, spec=game.spec, int8=int8, int8_min_speedup=0.0)
        for int8 in {ActorConfig(env_id=args.env_id, **s).int8 for s in (new, old)}
    }
    new_player = ActorSearchPlayer(game, policies, new, rng)
    old_player = ActorSearchPlayer(game, policies, old, rng)
    t0 = time.perf_counter()
    records, verdict = play_match(
        game, new_player, old_player, args.games, parse_elo_bounds(args.sprt) if args.sprt else None
    )
    r = summarise(
        records, new_player.name, old_player.name, args.env_id, None, time.perf_counter() - t0, verdict
    )
    sprt_text = f", SPRT {verdict.decision}" if verdict is not None else ""
    print(
        f"{r.model} vs {r.opponent}: {r.games_played} games, +{r.wins} ={r.draws} -{r.losses}, "
        f"score {r.score:.3f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}], Elo {r.elo:+.0f} "
        f"[{r.elo_ci[0]:+.0f}, {r.elo_ci[1]:+.0f}]{sprt_text}, {r.elapsed_s:.0f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
