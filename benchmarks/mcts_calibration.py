"""The evaluator's rollout MCTS (`--opponent mcts:SIMS`) against OpenSpiel's MCTSBot at equal
simulations, so that "MCTS-1000" means what it means in published results.

    python benchmarks/mcts_calibration.py [--env-id connect4] [--sims 200] [--games 200] [--json]

OpenSpiel's reference opponent, as its AlphaZero evaluation builds it: UCT with c = 2, one
random rollout per leaf, MCTS-Solver on (`solve=True`). Colours alternate game by game; the
score is ours, (wins + draws / 2) / games, with its 95% Wilson interval and Elo. A calibrated
opponent scores within 0.45-0.55 over 200 games at 200 and at 1000 simulations.
Needs open-spiel (a test requirement).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.evaluator.match import wilson_interval  # noqa: E402
from trainer.evaluator.sprt import elo_from_score  # noqa: E402
from trainer.games import DRAW, get_game  # noqa: E402
from trainer.search.players import make_player  # noqa: E402

OPENSPIEL_NAMES = {"tictactoe": "tic_tac_toe", "connect4": "connect_four"}
OPENSPIEL_UCT_C = 2.0


def play_one(env_id: str, sims: int, ours_first: bool, seed: int, c_puct: float | None = None) -> int:
    """One game; +1 ours wins, 0 draw, -1 OpenSpiel's bot wins. Both sides see the same moves
    (OpenSpiel numbers Connect Four and tic-tac-toe actions like we do)."""
    import pyspiel
    from open_spiel.python.algorithms import mcts

    game = get_game(env_id)
    os_game = pyspiel.load_game(OPENSPIEL_NAMES[env_id])
    rng = np.random.default_rng(seed)
    ours = make_player(f"mcts:{sims}", game, rng, **({} if c_puct is None else {"c_puct": c_puct}))
    theirs = mcts.MCTSBot(
        os_game,
        OPENSPIEL_UCT_C,
        sims,
        mcts.RandomRolloutEvaluator(1, np.random.RandomState(seed)),
        solve=True,
        random_state=np.random.RandomState(seed + 1),
    )
    state, os_state = game.initial_state(), os_game.new_initial_state()
    while not state.is_terminal:
        our_turn = (state.ply % 2 == 0) == ours_first
        action = ours.choose([state])[0] if our_turn else int(theirs.step(os_state))
        state = game.apply(state, action)
        os_state.apply_action(action)
    if state.winner == DRAW:
        return 0
    return 1 if (state.winner == 1) == ours_first else -1


def calibrate(env_id: str, sims: int, games: int, seed: int, c_puct: float | None = None) -> dict:
    t0 = time.monotonic()
    results = [play_one(env_id, sims, i % 2 == 0, seed + i, c_puct) for i in range(games)]
    wins, draws = results.count(1), results.count(0)
    score = (wins + 0.5 * draws) / games
    lo, hi = wilson_interval(score, games)
    return {
        "env_id": env_id,
        "sims": sims,
        "games": games,
        "wins": wins,
        "draws": draws,
        "losses": results.count(-1),
        "score": score,
        "ci": [lo, hi],
        "elo": elo_from_score(score),
        "elapsed_s": time.monotonic() - t0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env-id", default="connect4", choices=sorted(OPENSPIEL_NAMES))
    ap.add_argument("--sims", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--games", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--c-puct",
        type=float,
        default=None,
        help="our player's exploration constant (default: the evaluator's)",
    )
    ap.add_argument("--json", action="store_true", help="one JSON object per line, one per --sims value")
    args = ap.parse_args()
    for sims in args.sims:
        r = calibrate(args.env_id, sims, args.games, args.seed, args.c_puct)
        if args.json:
            print(json.dumps({**r, "elo": r["elo"] if abs(r["elo"]) < float("inf") else None}), flush=True)
        else:
            print(
                f"{r['env_id']} mcts:{sims} vs OpenSpiel MCTSBot({sims}): {r['wins']}-{r['draws']}-{r['losses']} "
                f"score {r['score']:.3f} (95% CI {r['ci'][0]:.3f}-{r['ci'][1]:.3f}), Elo {r['elo']:+.0f}, "
                f"{r['elapsed_s']:.0f}s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
