"""Tic-tac-toe: cell 3*row + col with row 0 at the top; the action is the cell."""

from __future__ import annotations

import numpy as np

from trainer.games.base import DRAW, Game, GameSpec, GameState

LINES = [
    (0, 1, 2),
    (3, 4, 5),
    (6, 7, 8),  # rows
    (0, 3, 6),
    (1, 4, 7),
    (2, 5, 8),  # columns
    (0, 4, 8),
    (2, 4, 6),  # diagonals
]


class TicTacToe(Game):
    spec = GameSpec(
        env_id="tictactoe",
        display_name="Tic-Tac-Toe",
        board_width=3,
        board_height=3,
        num_actions=9,
        obs_size=29,
        legal_mask_offset=18,
    )

    def legal_mask(self, state: GameState) -> np.ndarray:
        if state.is_terminal:
            return np.zeros(9, dtype=bool)
        return np.asarray(state.board) == 0

    def apply(self, state: GameState, action: int) -> GameState:
        if state.is_terminal or not 0 <= action < 9 or state.board[action] != 0:
            raise ValueError(f"illegal tictactoe move {action}")
        board = list(state.board)
        board[action] = state.to_move
        winner = 0
        if any(board[a] == board[b] == board[c] == state.to_move for a, b, c in LINES):
            winner = state.to_move
        elif all(board):
            winner = DRAW
        return GameState(tuple(board), 3 - state.to_move, winner, state.ply + 1)

    def cell_symmetries(self):
        grid = np.arange(9).reshape(3, 3)
        out = []
        for k in range(4):
            rotated = np.rot90(grid, k)
            out.append((f"rot{90 * k}", rotated.ravel().copy(), rotated.ravel().copy()))
            flipped = np.fliplr(rotated)
            out.append((f"rot{90 * k}_flip", flipped.ravel().copy(), flipped.ravel().copy()))
        return out

    def render(self, state: GameState) -> str:
        marks = {0: ".", 1: "X", 2: "O"}
        rows = [" ".join(marks[state.board[3 * r + c]] for c in range(3)) for r in range(3)]
        return "\n".join(rows)
