"""Random board symmetries per sample, for a whole batch at once.

Each game lists its symmetries as gather indices (`Game.symmetries()`: new[i] = old[index[i]])
over the observation and over the actions. Stacking them gives tables [S, obs_size] and
[S, num_actions]; picking one row of each per sample and calling `np.take_along_axis`
transforms the stone planes, the legal mask (part of the observation) and the policy target
of every sample in one call each, so they cannot drift apart.
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
    def for_spec(cls, spec: GameSpec) -> "Augmenter":
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

    def apply_chosen(self, obs: np.ndarray, policy: np.ndarray, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.take_along_axis(obs, self.obs_index[choice], axis=1),
            np.take_along_axis(policy, self.action_index[choice], axis=1),
        )


def _shape(spec: GameSpec) -> tuple[int, ...]:
    return (spec.board_width, spec.board_height, spec.num_actions, spec.obs_size, spec.legal_mask_offset)
