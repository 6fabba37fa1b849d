"""Observation and state-blob layouts (docs/contract.md section 2, and "Blob encodings" in
section 1) and symmetry consistency."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.games import DRAW, get_game
from trainer.games.base import GameState


def _random_positions(env_id: str, n: int, seed: int = 0, finished: bool = False) -> list[GameState]:
    game = get_game(env_id)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = game.initial_state()
        stop = None if finished else int(rng.integers(0, game.spec.cells))
        while not s.is_terminal and (stop is None or s.ply < stop):
            s = game.apply(s, int(rng.choice(game.legal_actions(s))))
        out.append(s)
    return out


@pytest.mark.parametrize("env_id, obs_size, offset, a", [("tictactoe", 29, 18, 9), ("connect4", 93, 84, 7)])
def test_observation_layout(env_id, obs_size, offset, a):
    game = get_game(env_id)
    spec = game.spec
    assert (spec.obs_size, spec.legal_mask_offset, spec.num_actions) == (obs_size, offset, a)
    cells = spec.cells
    for s in _random_positions(env_id, 200, seed=1):
        obs = game.encode(s)
        assert obs.dtype == np.float32 and obs.shape == (obs_size,)
        board = np.asarray(s.board)
        np.testing.assert_array_equal(obs[:cells], board == 1)
        np.testing.assert_array_equal(obs[cells : 2 * cells], board == 2)
        np.testing.assert_array_equal(obs[offset : offset + a], game.legal_mask(s))
        side = obs[offset + a :]
        if not s.is_terminal:
            np.testing.assert_array_equal(side, [1, 0] if s.to_move == 1 else [0, 1])
        assert set(np.unique(obs)) <= {0.0, 1.0}


@pytest.mark.parametrize("env_id", ["tictactoe", "connect4"])
def test_terminal_observation_names_last_mover_and_has_no_legal_moves(env_id):
    game = get_game(env_id)
    spec = game.spec
    off, a = spec.legal_mask_offset, spec.num_actions
    for s in _random_positions(env_id, 100, seed=2, finished=True):
        obs = game.encode(s)
        assert not obs[off : off + a].any()
        last_mover = 1 if s.ply % 2 == 1 else 2  # first player makes the odd-numbered plies
        np.testing.assert_array_equal(obs[off + a :], [1, 0] if last_mover == 1 else [0, 1])
        if s.winner != DRAW:
            assert s.winner == last_mover


def test_connect4_cells_count_rows_from_the_bottom():
    game = get_game("connect4")
    s = game.apply(game.apply(game.initial_state(), 2), 2)
    obs = game.encode(s)
    assert obs[7 * 0 + 2] == 1.0  # first stone in the bottom row
    assert obs[42 + 7 * 1 + 2] == 1.0  # second player's stone on top of it


def test_tictactoe_cells_count_rows_from_the_top():
    game = get_game("tictactoe")
    s = game.apply(game.initial_state(), 2)  # top-right corner
    assert game.render(s).splitlines()[0] == ". . X"
    assert game.encode(s)[2] == 1.0


@pytest.mark.parametrize("env_id", ["tictactoe", "connect4"])
def test_state_blob_layout(env_id):
    game = get_game(env_id)
    cells = game.spec.cells
    for s in _random_positions(env_id, 50, seed=3) + _random_positions(env_id, 20, seed=4, finished=True):
        blob = game.state_blob(s)
        assert len(blob) == cells + 2
        assert tuple(blob[:cells]) == s.board
        assert blob[cells] == s.to_move and blob[cells + 1] == s.winner
        assert blob[cells + 1] in (0, 1, 2, 3)


def _state_from_obs(game, obs: np.ndarray, to_move: int) -> GameState:
    cells = game.spec.cells
    board = tuple(int(x) for x in obs[:cells] + 2 * obs[cells : 2 * cells])
    return GameState(board=board, to_move=to_move)


@pytest.mark.parametrize("env_id, count", [("tictactoe", 8), ("connect4", 2)])
def test_symmetries_keep_legal_mask_and_policy_consistent(env_id, count):
    game = get_game(env_id)
    spec = game.spec
    off, a = spec.legal_mask_offset, spec.num_actions
    syms = game.symmetries()
    assert len(syms) == count and syms[0].name.startswith(("identity", "rot0"))
    for s in _random_positions(env_id, 60, seed=5):
        if s.is_terminal:
            continue
        obs = game.encode(s)
        policy = np.random.default_rng(0).random(a)
        for sym in syms:
            t_obs = obs[sym.obs_index]
            t_state = _state_from_obs(game, t_obs, s.to_move)
            # The transformed legal mask is exactly the legal moves of the transformed board...
            np.testing.assert_array_equal(
                t_obs[off : off + a] > 0.5, game.legal_mask(t_state), err_msg=sym.name
            )
            # ...and re-encoding the transformed board gives the transformed observation.
            np.testing.assert_array_equal(game.encode(t_state), t_obs, err_msg=sym.name)
            # A move and its transformed policy entry land on the same transformed cell.
            t_policy = policy[sym.action_index]
            for new_a in range(a):
                old_a = sym.action_index[new_a]
                assert t_policy[new_a] == policy[old_a]
                if game.legal_mask(s)[old_a]:
                    after = _state_from_obs(
                        game, game.encode(game.apply(s, old_a))[sym.obs_index], 3 - s.to_move
                    )
                    assert after.board == game.apply(t_state, new_a).board, sym.name


_THIRD_GAME = '''
"""A 1x4 strip: place a stone on an empty cell; whoever holds two adjacent cells wins."""

import numpy as np

from trainer.games.base import DRAW, Game, GameSpec, GameState


class Strip(Game):
    spec = GameSpec(env_id="strip", display_name="Strip", board_width=4, board_height=1,
                    num_actions=4, obs_size=14, legal_mask_offset=8)

    def legal_mask(self, state):
        return np.zeros(4, dtype=bool) if state.is_terminal else np.asarray(state.board) == 0

    def apply(self, state, action):
        if state.is_terminal or state.board[action] != 0:
            raise ValueError(f"illegal strip move {action}")
        board = list(state.board)
        board[action] = state.to_move
        won = any(board[i] == board[i + 1] == state.to_move for i in range(3))
        winner = state.to_move if won else (DRAW if all(board) else 0)
        return GameState(tuple(board), 3 - state.to_move, winner, state.ply + 1)

    def cell_symmetries(self):
        return [("identity", np.arange(4), np.arange(4))]

    def render(self, state):
        return "".join(".XO"[c] for c in state.board)
'''


@pytest.fixture
def extra_game_dir(tmp_path):
    """A folder spliced into the real package's search path, so modules written there are
    found exactly like a new file in trainer/games/ (the real folder is never touched)."""
    import importlib
    import sys

    import trainer.games as games_pkg

    folder = tmp_path / "more_games"
    folder.mkdir()
    games_pkg.__path__.append(str(folder))
    importlib.invalidate_caches()
    before = set(sys.modules)
    try:
        yield folder
    finally:
        games_pkg.__path__.remove(str(folder))
        for name in set(sys.modules) - before:
            if name.startswith("trainer.games."):
                del sys.modules[name]
                delattr(games_pkg, name.rsplit(".", 1)[1])
        importlib.invalidate_caches()


def test_a_new_game_module_is_discovered_without_editing_the_package(extra_game_dir):
    from trainer.games import KNOWN_ENV_IDS, discover_games

    assert set(KNOWN_ENV_IDS) == {"tictactoe", "connect4"}
    (extra_game_dir / "strip.py").write_text(_THIRD_GAME)
    # Neither a module that only imports another game's class nor a private one registers.
    (extra_game_dir / "helpers.py").write_text("from trainer.games.tictactoe import TicTacToe\n")
    (extra_game_dir / "_scratch.py").write_text("raise RuntimeError('private modules are not imported')\n")
    found = discover_games()
    assert set(found) == {"tictactoe", "connect4", "strip"}
    assert found["tictactoe"].__module__ == "trainer.games.tictactoe"
    game = found["strip"]()
    s = game.initial_state()
    for a in (0, 3, 1):
        s = game.apply(s, a)
    assert s.winner == 1 and game.render(s) == "XX.O"
    obs = game.encode(s)
    assert obs.shape == (14,) and not obs[8:12].any()  # the base class's encoding works as is


def test_two_games_claiming_one_env_id_is_an_error(extra_game_dir):
    from trainer.games import discover_games

    (extra_game_dir / "tictactoe_again.py").write_text(
        _THIRD_GAME.replace('env_id="strip"', 'env_id="tictactoe"')
    )
    with pytest.raises(ValueError, match="'tictactoe' is claimed by both"):
        discover_games()
