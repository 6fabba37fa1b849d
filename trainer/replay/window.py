"""The replay window: which rows training samples from, and the ring buffer that holds them.

KataGo's growing window. Early in a run every row is worth training on; later, old rows
come from much weaker networks, so training should look at the newest W rows only. With N
rows seen in total, W is N itself up to m rows, then grows sub-linearly:

    W(N) = N                                                      if N <= m
    W(N) = min(cap, m + beta * (N^alpha - m^alpha) / (alpha * m^(alpha-1)))   otherwise

The second branch is continuous at N = m with slope beta there (dW/dN = beta * (N/m)^(alpha-1)),
so the window keeps growing, but ever more slowly (alpha < 1), and stops at `cap`.
A fixed window (--window) replaces the formula with min(N, window).

Memory follows W, not the DB: the buffer holds decoded rows and its capacity grows with W
(in steps, never beyond the largest W it can reach), so a 10-million-row DB with a
250k-row window costs 250k rows of memory.

With position averaging on, sampling draws from the distinct positions of the newest W rows
instead of from the rows, each with its rows' mean targets (`trainer/replay/position_average.py`),
kept up to date as rows enter and leave those W.
"""

from __future__ import annotations

import numpy as np

from trainer.replay.position_average import PositionAverages


def katago_window_size(n: int, m: int, alpha: float, beta: float, cap: int) -> int:
    """Rows in the window after `n` rows seen (see the module docstring)."""
    if n <= m:
        return int(min(n, cap))
    grown = m + beta * (n**alpha - m**alpha) / (alpha * m ** (alpha - 1.0))
    return int(min(cap, grown))


def window_size(
    rows_seen: int, fixed: int = 0, m: int = 5000, alpha: float = 0.75, beta: float = 0.4, cap: int = 250_000
) -> int:
    """The window for `rows_seen`: min(rows_seen, fixed) if fixed > 0, else KataGo's formula."""
    if fixed > 0:
        return min(int(rows_seen), int(fixed))
    return katago_window_size(rows_seen, m, alpha, beta, cap)


class ReplayWindow:
    """Ring buffer of the newest decoded rows; samples uniformly from the newest W.

    Not thread-safe: one thread (the replay source's worker) adds and samples.
    """

    def __init__(
        self,
        obs_size: int,
        num_actions: int,
        max_capacity: int,
        initial_capacity: int = 4096,
        average_positions: bool = False,
    ):
        self.obs_size, self.num_actions = obs_size, num_actions
        self.max_capacity = max(1, int(max_capacity))
        cap = min(self.max_capacity, max(1, initial_capacity))
        self.obs = np.zeros((cap, obs_size), np.float32)
        self.policy = np.zeros((cap, num_actions), np.float32)
        self.value = np.zeros(cap, np.float32)
        self.head = 0  # next slot to write
        self.count = 0  # rows held (<= capacity)
        self.window = 0  # W: sample from the newest min(W, count) rows
        # Rows are numbered in the order they were added: row `added - 1` is the newest.
        # With averaging, `positions` counts exactly rows tail .. added - 1, the newest W.
        self.added = 0
        self.positions = PositionAverages(obs_size, num_actions) if average_positions else None
        self._tail = 0

    @property
    def capacity(self) -> int:
        return int(self.value.shape[0])

    def __len__(self) -> int:
        return self.count

    @property
    def sample_size(self) -> int:
        """Rows sampling draws from right now."""
        return min(self.window, self.count)

    def set_window(self, w: int) -> None:
        """Set W; grows storage to hold W rows (by at least 1.5x, to amortise the copies)."""
        w = min(int(w), self.max_capacity)
        self.window = w
        if w > self.capacity:
            self._grow(min(self.max_capacity, max(w, int(self.capacity * 1.5))))
        self._sync_positions(self.added)

    def _grow(self, new_cap: int) -> None:
        order = self._chronological()
        obs = np.zeros((new_cap, self.obs_size), np.float32)
        policy = np.zeros((new_cap, self.num_actions), np.float32)
        value = np.zeros(new_cap, np.float32)
        n = len(order)
        obs[:n], policy[:n], value[:n] = self.obs[order], self.policy[order], self.value[order]
        self.obs, self.policy, self.value = obs, policy, value
        self.head = n % new_cap
        self.count = n

    def _chronological(self) -> np.ndarray:
        """Slot indices of the held rows, oldest first."""
        cap = self.capacity
        return (self.head - self.count + np.arange(self.count)) % cap

    def add(self, obs: np.ndarray, policy: np.ndarray, value: np.ndarray) -> None:
        """Append rows (oldest first); the oldest held rows drop out when full."""
        n = int(value.shape[0])
        cap = self.capacity
        if n == 0:
            return
        if n >= cap:
            obs, policy, value = obs[-cap:], policy[-cap:], value[-cap:]
            n = cap
        # Rows about to be overwritten leave the averages while their targets are still here.
        overwritten = max(0, self.count + n - cap)
        self._drop_positions_before(self.added - self.count + overwritten)
        first = min(n, cap - self.head)
        for src, dst in ((obs, self.obs), (policy, self.policy), (value, self.value)):
            dst[self.head : self.head + first] = src[:first]
            dst[: n - first] = src[first:n]
        self.head = (self.head + n) % cap
        self.count = min(cap, self.count + n)
        self.added += n
        self._sync_positions(self.added - n)

    def _slots(self, first: int, stop: int) -> np.ndarray:
        """Slots of rows numbered first .. stop - 1 (all still held)."""
        return (self.head - (self.added - np.arange(first, stop))) % self.capacity

    def _drop_positions_before(self, first_kept: int) -> None:
        if self.positions is None or first_kept <= self._tail:
            return
        slots = self._slots(self._tail, first_kept)
        self.positions.remove(self.obs[slots], self.policy[slots], self.value[slots])
        self._tail = first_kept

    def _sync_positions(self, old_added: int) -> None:
        """Make the averages count the newest W rows again: rows `old_added` .. on are new,
        older ones leave (or, when W grew, join) at the tail."""
        if self.positions is None:
            return
        target = self.added - self.sample_size
        self._drop_positions_before(min(target, old_added))
        join = np.concatenate(
            [self._slots(target, min(self._tail, old_added)), self._slots(max(target, old_added), self.added)]
        )
        self.positions.add(self.obs[join], self.policy[join], self.value[join])
        self._tail = target

    def sample_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(obs, policy, value) that `sample_indices` indexes: the rows, or with averaging
        the distinct positions and their mean targets."""
        if self.positions is not None:
            return self.positions.obs, self.positions.policy, self.positions.value
        return self.obs, self.policy, self.value

    def sample_indices(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Indices into `sample_arrays()` of `batch_size` samples drawn uniformly (with
        replacement) from the newest W rows, or from their distinct positions."""
        size = self.sample_size
        if size <= 0:
            raise ValueError("the replay window is empty")
        if self.positions is not None:
            return rng.integers(0, len(self.positions), batch_size)
        back = rng.integers(0, size, batch_size)  # 0 = newest row
        return (self.head - 1 - back) % self.capacity

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = self.sample_indices(rng, batch_size)
        obs, policy, value = self.sample_arrays()
        return obs[idx], policy[idx], value[idx]

    def newest(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the newest `n` held rows, oldest first (for tests and inspection)."""
        order = self._chronological()[-n:] if n > 0 else np.zeros(0, np.int64)
        return self.obs[order], self.policy[order], self.value[order]
