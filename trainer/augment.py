"""Random board symmetries per sample, for a whole batch at once.

Each game lists its symmetries as gather indices (`Game.symmetries()`: new[i] = old[index[i]])
over the observation and over the actions. Stacking them gives tables [S, obs_size] and
[S, num_actions]; picking one row of each per sample and gathering along the feature axis
(take_along_axis semantics) transforms the stone planes, the legal mask (part of the
observation) and the policy target of every sample in one call each, so they cannot drift
apart.
"""

from __future__ import annotations

import logging

import numpy as np

from trainer.games import GameSpec, Symmetry, get_game

log = logging.getLogger(__name__)


class Augmenter:
    def __init__(self, symmetries: list[Symmetry]):
        if not symmetries:
            raise ValueError("need at least the identity symmetry")
        self.names = [s.name for s in symmetries]
        self.obs_index = np.stack([np.asarray(s.obs_index, np.int64) for s in symmetries])
        self.action_index = np.stack([np.asarray(s.action_index, np.int64) for s in symmetries])

    @classmethod
    def for_spec(cls, spec: GameSpec) -> Augmenter:
        """The game's symmetries, or the identity only for a game the trainer does not know
        (or whose DB shapes differ from the known game's), since any other map could be wrong."""
        try:
            game = get_game(spec.env_id)
        except ValueError:
            game = None
        if game is None or _shape(game.spec) != _shape(spec):
            log.warning("no symmetries known for %r with these shapes; augmentation is off", spec.env_id)
            identity = Symmetry("identity", np.arange(spec.obs_size), np.arange(spec.num_actions))
            return cls([identity])
        return cls(game.symmetries())

    @property
    def count(self) -> int:
        return int(self.obs_index.shape[0])

    def apply(
        self, obs: np.ndarray, policy: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(obs, policy, chosen symmetry per sample): one uniformly random symmetry per row."""
        choice = rng.integers(0, self.count, obs.shape[0])
        return self.apply_chosen(obs, policy, choice) + (choice,)

    def apply_chosen(
        self, obs: np.ndarray, policy: np.ndarray, choice: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row i transformed by symmetry choice[i] (`np.take_along_axis(x, index[choice], 1)`)."""
        rows = np.arange(obs.shape[0])
        return _take_rows(obs, rows, self.obs_index[choice]), _take_rows(
            policy, rows, self.action_index[choice]
        )

    def gather(
        self, obs_store: np.ndarray, policy_store: np.ndarray, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows `rows` of the stores, each under a random symmetry, in one gather per array
        (sampling and augmenting a batch without the intermediate copy)."""
        choice = rng.integers(0, self.count, rows.shape[0])
        return _take_rows(obs_store, rows, self.obs_index[choice]), _take_rows(
            policy_store, rows, self.action_index[choice]
        )


def _take_rows(store: np.ndarray, rows: np.ndarray, index: np.ndarray) -> np.ndarray:
    """out[i, j] = store[rows[i], index[i, j]].

    The same as `np.take_along_axis(store[rows], index, axis=1)`, written as one flat
    `np.take`: several times faster, because take_along_axis goes through broadcast fancy
    indexing. This runs once per batch on the replay worker, where every
    microsecond is taken from the training thread (they share the GIL).
    """
    width = store.shape[1]
    flat_index = index + (rows.astype(np.int64) * width)[:, None]  # `index` is a fresh copy
    # mode="clip" skips numpy's bounds-error pass; every index is in range by construction.
    return np.take(store.reshape(-1), flat_index, mode="clip")


def _shape(spec: GameSpec) -> tuple[int, ...]:
    return (spec.board_width, spec.board_height, spec.num_actions, spec.obs_size, spec.legal_mask_offset)
