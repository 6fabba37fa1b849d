"""Position averaging: one training sample per distinct position in the replay window.

Self-play repeats positions, most of all in the opening (every game of Connect Four starts
from the same board, and the first plies branch little). Sampled row by row, such a position
is trained on as often as it was played, each time towards one game's noisy result and one
search's visit counts. Averaged, it is one sample whose targets are the mean policy and the
mean value over its rows (Clausen, 2021; AlphaZero.jl), which is a lower-variance estimate of
the same targets and leaves the batch to the positions the window holds fewer copies of.

The averages are kept as the window moves: a row entering adds its targets to its position's
sums, a row leaving subtracts them, and a position with no rows left is dropped. The means are
updated for the one position a row touches, so sampling reads ready arrays.

A position is its observation, byte for byte (the board and the side to move).
"""

from __future__ import annotations

import numpy as np


class PositionAverages:
    """Distinct positions of a multiset of rows, with the mean policy and value of each.

    `obs[:n]`, `policy[:n]`, `value[:n]` (n = len(self)) are the samples; their order is
    arbitrary and changes when a position is dropped.
    """

    def __init__(self, obs_size: int, num_actions: int, initial_capacity: int = 1024):
        cap = max(1, initial_capacity)
        self._index: dict[bytes, int] = {}  # position -> its slot
        self._keys: list[bytes] = []  # slot -> position
        self.obs = np.zeros((cap, obs_size), np.float32)
        self.policy = np.zeros((cap, num_actions), np.float32)  # mean of the rows' policies
        self.value = np.zeros(cap, np.float32)  # mean of the rows' values
        # Sums in float64: rows are added and subtracted for as long as the run lasts.
        self._policy_sum = np.zeros((cap, num_actions), np.float64)
        self._value_sum = np.zeros(cap, np.float64)
        self._rows = np.zeros(cap, np.int64)  # rows of the window at this position

    def __len__(self) -> int:
        return len(self._keys)

    def rows_at(self, obs: np.ndarray) -> int:
        """Rows held of the position `obs` (0 when none)."""
        slot = self._index.get(np.ascontiguousarray(obs, np.float32).tobytes())
        return 0 if slot is None else int(self._rows[slot])

    def add(self, obs: np.ndarray, policy: np.ndarray, value: np.ndarray) -> None:
        """Count rows `[n, obs_size]`, `[n, num_actions]`, `[n]` in."""
        for i in range(value.shape[0]):
            slot = self._slot_for(obs[i])
            self._policy_sum[slot] += policy[i]
            self._value_sum[slot] += value[i]
            self._rows[slot] += 1
            self._update_mean(slot)

    def remove(self, obs: np.ndarray, policy: np.ndarray, value: np.ndarray) -> None:
        """Count rows out again (each must have been added)."""
        for i in range(value.shape[0]):
            slot = self._index[obs[i].tobytes()]
            self._rows[slot] -= 1
            if self._rows[slot] == 0:
                self._drop(slot)
                continue
            self._policy_sum[slot] -= policy[i]
            self._value_sum[slot] -= value[i]
            self._update_mean(slot)

    def _slot_for(self, obs_row: np.ndarray) -> int:
        key = obs_row.tobytes()
        slot = self._index.get(key)
        if slot is not None:
            return slot
        slot = len(self._keys)
        if slot == self.value.shape[0]:
            self._grow(2 * slot)
        self._index[key] = slot
        self._keys.append(key)
        self.obs[slot] = obs_row
        self._policy_sum[slot] = 0.0
        self._value_sum[slot] = 0.0
        self._rows[slot] = 0
        return slot

    def _update_mean(self, slot: int) -> None:
        n = self._rows[slot]
        self.policy[slot] = self._policy_sum[slot] / n
        self.value[slot] = self._value_sum[slot] / n

    def _drop(self, slot: int) -> None:
        """Forget a position: the last slot moves into its place, so slots stay dense."""
        key = self._keys[slot]
        last = len(self._keys) - 1
        if slot != last:
            moved = self._keys[last]
            self._keys[slot] = moved
            self._index[moved] = slot
            for arr in (self.obs, self.policy, self.value, self._policy_sum, self._value_sum, self._rows):
                arr[slot] = arr[last]
        self._keys.pop()
        del self._index[key]

    def _grow(self, new_cap: int) -> None:
        for name in ("obs", "policy", "value", "_policy_sum", "_value_sum", "_rows"):
            old = getattr(self, name)
            new = np.zeros((new_cap, *old.shape[1:]), old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
