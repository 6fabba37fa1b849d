"""Our game rules agree with OpenSpiel's on random games: legal moves, terminal plies, winner.

open-spiel is a declared test dependency (requirements.txt), so a missing `pyspiel` fails
this module instead of skipping the only independent check of the rules.
"""

from __future__ import annotations

import numpy as np
import pyspiel
import pytest

from trainer.games import DRAW, get_game


def _board_from_openspiel(env_id: str, os_state) -> tuple[int, ...]:
    """OpenSpiel prints the board with its TOP row first ('x' first player, 'o' second);
    we number tic-tac-toe rows from the top and Connect Four rows from the BOTTOM."""
    rows = [line for line in str(os_state).strip().splitlines() if line.strip()]
    if env_id == "connect4":
        rows = rows[::-1]
    marks = {".": 0, "x": 1, "o": 2}
    return tuple(marks[ch] for row in rows for ch in row.strip())


@pytest.mark.parametrize(
    "env_id, os_name, games",
    [("tictactoe", "tic_tac_toe", 1500), ("connect4", "connect_four", 500)],
)
def test_random_games_agree_with_openspiel(env_id, os_name, games):
    game = get_game(env_id)
    os_game = pyspiel.load_game(os_name)
    assert os_game.num_distinct_actions() == game.spec.num_actions
    rng = np.random.default_rng(1234)
    outcomes = {1: 0, 2: 0, DRAW: 0}
    for _ in range(games):
        ours, theirs = game.initial_state(), os_game.new_initial_state()
        while True:
            assert ours.is_terminal == theirs.is_terminal(), game.render(ours)
            assert _board_from_openspiel(env_id, theirs) == ours.board, game.render(ours)
            if ours.is_terminal:
                break
            assert ours.to_move == theirs.current_player() + 1
            legal = game.legal_actions(ours)
            assert legal == sorted(theirs.legal_actions())
            a = int(rng.choice(legal))
            ours = game.apply(ours, a)
            theirs.apply_action(a)
        returns = theirs.returns()
        expected = DRAW if returns[0] == returns[1] else (1 if returns[0] > returns[1] else 2)
        assert ours.winner == expected, game.render(ours)
        assert ours.ply == theirs.move_number()
        outcomes[ours.winner] += 1
    # Random games must reach all three results, or the test proves little.
    assert all(n > 0 for n in outcomes.values()), outcomes


def test_connect4_openspiel_tensor_orientation():
    """OpenSpiel's observation tensor has row 0 at the bottom too: same cells as ours."""
    game = get_game("connect4")
    os_state = pyspiel.load_game("connect_four").new_initial_state()
    ours = game.initial_state()
    for a in (3, 3, 0, 6, 3):
        os_state.apply_action(a)
        ours = game.apply(ours, a)
    planes = np.asarray(os_state.observation_tensor(0)).reshape(3, 6, 7)
    board = np.asarray(ours.board).reshape(6, 7)
    # Plane order is "player 0's stones, player 1's stones, empty" from player 0's view.
    np.testing.assert_array_equal(planes[0], board == 1)
    np.testing.assert_array_equal(planes[1], board == 2)
    assert ours.board[7 * 0 + 3] == 1 and ours.board[7 * 2 + 3] == 1 and ours.board[7 * 1 + 3] == 2
