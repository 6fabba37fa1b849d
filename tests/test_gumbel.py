"""Gumbel root search: sequential halving, the completed-Q policy target, policy improvement."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.games import get_game
from trainer.games.base import GameState
from trainer.search.gumbel import GumbelConfig, SequentialHalving, gumbel_search
from trainer.search.mcts import MCTSConfig, ObsEvaluator, RolloutEvaluator


def _ttt(board: str, to_move: int) -> GameState:
    cells = tuple({".": 0, "X": 1, "O": 2}[c] for c in board.replace(" ", ""))
    return GameState(cells, to_move, 0, sum(c != 0 for c in cells))


def _uniform(obs, masks):
    m = masks.astype(np.float64)
    return m / m.sum(axis=1, keepdims=True), np.zeros(len(obs))


def _misleading(favourite: int, weight: float = 0.6):
    """Priors that put `weight` on one move and spread the rest; values 0."""

    def fn(obs, masks):
        m = masks.astype(np.float64)
        p = (1 - weight) * m / m.sum(axis=1, keepdims=True)
        p[:, favourite] += weight
        return p, np.zeros(len(obs))

    return fn


@pytest.mark.parametrize("sims", [8, 16, 32])
def test_policy_target_is_a_distribution_over_legal_moves_and_visits_add_up(sims):
    game = get_game("connect4")
    s = game.initial_state()
    for a in (3, 3, 3, 3, 3, 3):  # column 3 full: six legal moves
        s = game.apply(s, a)
    (r,) = gumbel_search(
        game, [s], RolloutEvaluator(np.random.default_rng(0)), MCTSConfig(sims=sims), np.random.default_rng(0)
    )
    legal = game.legal_mask(s)
    assert r.policy.dtype == np.float32 and abs(float(r.policy.sum()) - 1) < 1e-5
    assert not r.policy[~legal].any() and (r.policy[legal] > 0).all()
    assert r.visits.sum() == sims and not r.visits[~legal].any()
    assert legal[r.action]


def test_sequential_halving_spreads_then_concentrates_the_budget():
    game = get_game("connect4")
    (r,) = gumbel_search(
        game, [game.initial_state()], ObsEvaluator(_uniform), MCTSConfig(sims=32), np.random.default_rng(1)
    )
    visits = np.sort(r.visits)[::-1]
    assert (r.visits >= 1).all()  # every considered move (all 7) gets a first look
    assert visits[0] > visits[2] > visits[-1]  # survivors of each halving get more
    assert r.visits[r.action] == visits[0]  # the played move survived every halving


def test_considered_moves_are_capped():
    game = get_game("connect4")
    cfg = GumbelConfig(considered=2)
    (r,) = gumbel_search(
        game,
        [game.initial_state()],
        ObsEvaluator(_uniform),
        MCTSConfig(sims=16),
        np.random.default_rng(2),
        cfg,
    )
    assert int((r.visits > 0).sum()) == 2
    sched = SequentialHalving(16, 2, np.zeros(7), cfg)
    assert sched.phases == 1


def test_finds_a_win_against_a_misleading_prior_with_few_simulations():
    """X wins at 2; the prior prefers 8. With 8 simulations the target moves mass to 2."""
    game = get_game("tictactoe")
    win = _ttt("XX. OO. ...", 1)
    prior = _misleading(8)
    for seed in range(5):
        (r,) = gumbel_search(
            game, [win], ObsEvaluator(prior), MCTSConfig(sims=8), np.random.default_rng(seed)
        )
        p_prior = prior(game.encode(win)[None], game.legal_mask(win)[None])[0][0]
        assert r.action == 2, (seed, r.visits)
        assert r.policy[2] > 0.9 > p_prior[2] and r.policy[8] < p_prior[8]


def test_blocks_a_threat_with_enough_simulations():
    """O must block at 2 (every other move loses to X's reply). With a flat value net the
    loss shows only two plies down, so the first halving (one visit per move at low
    budgets) cannot see it; 64 simulations give every move several visits first."""
    game = get_game("tictactoe")
    block = _ttt("XX. .O. ...", 2)
    for seed in range(5):
        (r,) = gumbel_search(
            game, [block], ObsEvaluator(_uniform), MCTSConfig(sims=64), np.random.default_rng(seed)
        )
        assert r.action == 2 and r.policy[2] == r.policy.max(), (seed, r.visits)


def test_without_noise_the_search_is_deterministic():
    game = get_game("connect4")
    runs = [
        gumbel_search(
            game,
            [game.initial_state()],
            ObsEvaluator(_misleading(5, 0.3)),
            MCTSConfig(sims=16),
            np.random.default_rng(seed),
            add_noise=False,
        )[0]
        for seed in range(2)
    ]
    assert runs[0].action == runs[1].action and np.array_equal(runs[0].visits, runs[1].visits)


@pytest.mark.parametrize("with_model", [False, True])
def test_actor_with_gumbel_search_writes_whole_games_with_improved_targets(tmp_path, with_model):
    import threading

    from actor_support import assert_whole_games, publish, read_games, tiny_model_bytes

    from actor_stub.config import ActorConfig
    from actor_stub.process import run_worker

    if with_model:
        publish(tmp_path / "models", tiny_model_bytes("connect4", step=7))
    cfg = ActorConfig(
        env_id="connect4",
        db=tmp_path / "replay.db",
        model_dir=tmp_path / "models",
        sims=8,
        search="gumbel",
        episodes=3,
        parallel_games=3,
        seed=5,
    )
    run_worker(cfg, cfg.episodes, cfg.seed, 0, threading.Event())
    games = read_games(cfg.db, "connect4")
    assert len(games) == 3
    assert_whole_games(games, "connect4")  # targets sum to 1 over legal moves, 0 elsewhere
    rows = [r for g in games.values() for r in g]
    # Completed-Q targets are dense over legal moves (not visit counts of 8 simulations).
    assert all(np.count_nonzero(r["policy_probs"]) == int(r["observation"][84:91].sum()) for r in rows)
