"""Connect Four: 7 columns x 6 rows, cell 7*row + col with row 0 the BOTTOM row.

The action is the column; a stone falls to the lowest empty row.
"""

from __future__ import annotations

import numpy as np

from trainer.games.base import DRAW, Game, GameSpec, GameState

W, H = 7, 6


def _winning_lines() -> list[tuple[int, int, int, int]]:
    lines = []
    for r in range(H):
        for c in range(W):
            for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                cells = [(r + i * dr, c + i * dc) for i in range(4)]
                if all(0 <= rr < H and 0 <= cc < W for rr, cc in cells):
                    lines.append(tuple(W * rr + cc for rr, cc in cells))
    return lines


_LINES = _winning_lines()
_LINES_THROUGH = [[line for line in _LINES if cell in line] for cell in range(W * H)]


class ConnectFour(Game):
    spec = GameSpec(
        env_id="connect4",
        display_name="Connect 4",
        board_width=W,
        board_height=H,
        num_actions=W,
        obs_size=93,
        legal_mask_offset=84,
    )

    def legal_mask(self, state: GameState) -> np.ndarray:
        if state.is_terminal:
            return np.zeros(W, dtype=bool)
        top_row = np.asarray(state.board[W * (H - 1) :])
        return top_row == 0

    def apply(self, state: GameState, action: int) -> GameState:
        if state.is_terminal or not 0 <= action < W:
            raise ValueError(f"illegal connect4 move {action}")
        board = list(state.board)
        for row in range(H):
            cell = W * row + action
            if board[cell] == 0:
                break
        else:
            raise ValueError(f"illegal connect4 move {action}: column full")
        mover = state.to_move
        board[cell] = mover
        winner = 0
        for a, b, c, d in _LINES_THROUGH[cell]:
            if board[a] == mover and board[b] == mover and board[c] == mover and board[d] == mover:
                winner = mover
                break
        else:
            if all(board[W * (H - 1) :]):
                winner = DRAW
        return GameState(tuple(board), 3 - state.to_move, winner, state.ply + 1)

    def cell_symmetries(self):
        identity = np.arange(W * H)
        mirror = np.array([W * r + (W - 1 - c) for r in range(H) for c in range(W)])
        return [
            ("identity", identity, np.arange(W)),
            ("mirror", mirror, np.arange(W)[::-1].copy()),
        ]

    def render(self, state: GameState) -> str:
        marks = {0: ".", 1: "X", 2: "O"}
        rows = []
        for r in reversed(range(H)):  # print the top row first
            rows.append(" ".join(marks[state.board[W * r + c]] for c in range(W)))
        rows.append(" ".join(str(c) for c in range(W)))
        return "\n".join(rows)
