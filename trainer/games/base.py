"""The one interface every game implements.

Trainer, evaluator and actor all talk to games through `Game`, so adding a game means
writing one file in `trainer/games/` with a subclass; the package finds it by itself.
States are small immutable values (a board array plus who moves and who won) so MCTS
can keep them in tree nodes without copying surprises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

# Winner codes, as in the contract's `state` blob.
NO_WINNER = 0
DRAW = 3


@dataclass(frozen=True)
class GameSpec:
    """The `game_metadata` row of a game: everything a consumer needs to size tensors."""

    env_id: str
    display_name: str
    board_width: int
    board_height: int
    num_actions: int
    obs_size: int
    legal_mask_offset: int
    player_count: int = 2

    @property
    def cells(self) -> int:
        return self.board_width * self.board_height

    @property
    def legal_slice(self) -> slice:
        """Where an observation holds the legal-move mask (docs/contract.md section 2)."""
        return slice(self.legal_mask_offset, self.legal_mask_offset + self.num_actions)

    def legal_masks(self, obs: np.ndarray) -> np.ndarray:
        """bool [..., num_actions]: the legal-move masks stored in observations [..., obs_size]."""
        return obs[..., self.legal_slice] > 0.5


@dataclass(frozen=True)
class GameState:
    board: tuple[int, ...]  # per cell: 0 empty, 1 first player, 2 second player
    to_move: int  # 1 or 2
    winner: int = NO_WINNER  # 0 none yet, 1, 2, or 3 = draw
    ply: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.winner != NO_WINNER


@dataclass(frozen=True)
class Symmetry:
    """A board symmetry as gather indices: `obs[..., obs_index]` and `policy[..., action_index]`.

    Both use the "new[i] = old[index[i]]" convention, so one fancy-index call transforms a
    whole batch and the stone planes, the legal mask and the policy target stay consistent.
    """

    name: str
    obs_index: np.ndarray
    action_index: np.ndarray


class Game(ABC):
    spec: GameSpec

    # --- rules -------------------------------------------------------------------------
    def initial_state(self) -> GameState:
        return GameState(board=(0,) * self.spec.cells, to_move=1)

    @abstractmethod
    def legal_mask(self, state: GameState) -> np.ndarray:
        """bool [num_actions]; all False on a terminal state."""

    @abstractmethod
    def apply(self, state: GameState, action: int) -> GameState:
        """The state after `action`; raises ValueError on an illegal move."""

    def legal_actions(self, state: GameState) -> list[int]:
        return [int(a) for a in np.flatnonzero(self.legal_mask(state))]

    def random_positions(self, count: int, rng: np.random.Generator) -> list[GameState]:
        """The initial position, then `count - 1` non-terminal positions reached by uniformly
        random legal moves: boards a model will really be asked about."""
        positions = [self.initial_state()]
        while len(positions) < count:
            state = self.initial_state()
            for _ in range(int(rng.integers(1, self.spec.cells + 1))):
                after = self.apply(state, int(rng.choice(self.legal_actions(state))))
                if after.is_terminal:
                    break
                state = after
            positions.append(state)
        return positions

    def reward_for_mover(self, before: GameState, after: GameState) -> float:
        """Contract reward: +1.0 if this move won the game, else 0.0."""
        return 1.0 if after.winner == before.to_move else 0.0

    # --- encodings (docs/contract.md section 2) -----------------------------------------
    def encode(self, state: GameState) -> np.ndarray:
        spec = self.spec
        cells = spec.cells
        obs = np.zeros(spec.obs_size, dtype=np.float32)
        board = np.asarray(state.board, dtype=np.int8)
        obs[:cells] = board == 1
        obs[cells : 2 * cells] = board == 2
        obs[spec.legal_slice] = self.legal_mask(state)
        # After the last ply the one-hot still names the player who just moved.
        side = state.to_move
        if state.is_terminal and state.ply > 0:
            side = 3 - state.to_move
        obs[spec.legal_slice.stop + (side - 1)] = 1.0
        return obs

    def state_blob(self, state: GameState) -> bytes:
        """Contract `state` blob: u8 board, then side to move, then winner."""
        return bytes(state.board) + bytes([state.to_move, state.winner])

    # --- augmentation --------------------------------------------------------------------
    @abstractmethod
    def cell_symmetries(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, cell gather index, action gather index) for each symmetry, identity first."""

    def symmetries(self) -> list[Symmetry]:
        spec = self.spec
        cells = spec.cells
        result = []
        for name, cell_idx, action_idx in self.cell_symmetries():
            obs_index = np.arange(spec.obs_size)
            obs_index[:cells] = cell_idx
            obs_index[cells : 2 * cells] = cells + cell_idx
            obs_index[spec.legal_slice] = spec.legal_mask_offset + action_idx
            result.append(Symmetry(name, obs_index, np.asarray(action_idx, dtype=np.int64)))
        return result

    # --- display -------------------------------------------------------------------------
    @abstractmethod
    def render(self, state: GameState) -> str: ...
