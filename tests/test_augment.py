"""Random symmetries on real game positions: stones, legal mask and policy move together."""

import numpy as np
import pytest
from replay_data import play_game, random_move

from trainer.augment import Augmenter
from trainer.games import GameSpec, GameState, get_game


def _positions(env_id: str, n_games: int, seed: int):
    """(obs [n, obs], policy [n, A], states) of real positions with a random legal policy."""
    game, rng = get_game(env_id), np.random.default_rng(seed)
    obs, policy, states = [], [], []
    for _ in range(n_games):
        for ply in play_game(game, random_move, rng):
            legal = game.legal_mask(ply.state)
            p = rng.random(game.spec.num_actions) * legal
            obs.append(game.encode(ply.state))
            policy.append((p / p.sum()).astype(np.float32))
            states.append(ply.state)
    return np.stack(obs), np.stack(policy), states


@pytest.mark.parametrize("env_id, n_sym", [("tictactoe", 8), ("connect4", 2)])
def test_every_symmetry_maps_positions_to_real_positions(env_id, n_sym):
    game = get_game(env_id)
    aug = Augmenter.for_spec(game.spec)
    assert aug.count == n_sym
    obs, policy, states = _positions(env_id, 6, seed=1)
    off, a = game.spec.legal_mask_offset, game.spec.num_actions
    cell_maps = game.cell_symmetries()
    for s in range(n_sym):
        choice = np.full(len(obs), s)
        new_obs, new_policy = aug.apply_chosen(obs, policy, choice)
        legal = new_obs[:, off : off + a] > 0.5
        assert np.all(new_policy[~legal] == 0)  # mass on legal moves of the augmented position only
        assert np.allclose(new_policy.sum(axis=1), 1.0)
        cell_idx = cell_maps[s][1]
        for i, st in enumerate(states):
            board = tuple(int(st.board[j]) for j in cell_idx)
            expected = game.encode(GameState(board, st.to_move, st.winner, st.ply))
            np.testing.assert_array_equal(new_obs[i], expected)


def test_symmetries_are_distinct_and_connect4_mirrors_columns():
    ttt = Augmenter.for_spec(get_game("tictactoe").spec)
    assert len({tuple(r) for r in ttt.action_index}) == 8
    c4 = Augmenter.for_spec(get_game("connect4").spec)
    assert c4.action_index[1].tolist() == [6, 5, 4, 3, 2, 1, 0]
    game = get_game("connect4")
    state = game.apply(game.initial_state(), 0)  # one stone in the bottom-left corner
    mirrored, _ = c4.apply_chosen(game.encode(state)[None], np.eye(7, dtype=np.float32)[:1], np.array([1]))
    assert mirrored[0, 6] == 1.0 and mirrored[0, :42].sum() == 1.0  # now bottom-right


def test_batch_apply_matches_per_sample_gather_and_uses_all_symmetries():
    game = get_game("tictactoe")
    aug = Augmenter.for_spec(game.spec)
    obs, policy, _ = _positions("tictactoe", 30, seed=2)
    new_obs, new_policy, choice = aug.apply(obs, policy, np.random.default_rng(3))
    syms = game.symmetries()
    for i in range(len(obs)):
        np.testing.assert_array_equal(new_obs[i], obs[i, syms[choice[i]].obs_index])
        np.testing.assert_array_equal(new_policy[i], policy[i, syms[choice[i]].action_index])
    assert set(choice.tolist()) == set(range(8))


def test_unknown_game_gets_identity_only():
    spec = GameSpec("othello", "Othello", 8, 8, 65, 195, 128)
    aug = Augmenter.for_spec(spec)
    assert aug.count == 1
    obs = np.random.default_rng(0).random((4, 195), dtype=np.float32)
    pol = np.random.default_rng(1).random((4, 65), dtype=np.float32)
    new_obs, new_pol, _ = aug.apply(obs, pol, np.random.default_rng(2))
    np.testing.assert_array_equal(new_obs, obs)
    np.testing.assert_array_equal(new_pol, pol)
