"""The replay window: KataGo's size formula and the ring buffer that samples the newest W rows."""

import numpy as np
import pytest

from trainer.replay.window import ReplayWindow, katago_window_size, window_size


def test_katago_window_formula():
    m, alpha, beta, cap = 5000, 0.75, 0.4, 250_000
    assert katago_window_size(0, m, alpha, beta, cap) == 0
    assert katago_window_size(4999, m, alpha, beta, cap) == 4999
    assert katago_window_size(m, m, alpha, beta, cap) == m
    # slope beta at N = m, then sub-linear growth
    assert katago_window_size(m + 100, m, alpha, beta, cap) == pytest.approx(m + 40, abs=1)
    n = 1_000_000
    expected = m + beta * (n**alpha - m**alpha) / (alpha * m ** (alpha - 1))
    assert katago_window_size(n, m, alpha, beta, cap) == int(expected)
    sizes = [katago_window_size(k, m, alpha, beta, cap) for k in range(0, 3_000_000, 50_000)]
    assert sizes == sorted(sizes) and max(sizes) == cap
    assert window_size(100, fixed=1000) == 100
    assert window_size(10**7, fixed=1000) == 1000
    assert window_size(10**7, fixed=0, m=m, alpha=alpha, beta=beta, cap=cap) == cap


def _rows(start: int, n: int):
    ids = np.arange(start, start + n, dtype=np.float32)
    return np.repeat(ids[:, None], 3, axis=1), np.repeat(ids[:, None], 2, axis=1), ids


def test_ring_keeps_newest_rows_in_order_across_wraps_and_growth():
    w = ReplayWindow(obs_size=3, num_actions=2, max_capacity=100, initial_capacity=8)
    w.set_window(8)
    w.add(*_rows(0, 5))
    w.add(*_rows(5, 6))  # wraps
    assert w.count == 8 and list(w.newest(8)[2]) == list(range(3, 11))
    w.set_window(30)  # grows, keeping order
    assert w.capacity >= 30 and list(w.newest(8)[2]) == list(range(3, 11))
    w.add(*_rows(11, 100))  # more than the capacity at once
    assert list(w.newest(30)[2]) == list(range(81, 111))
    obs, policy, value = w.newest(30)
    assert (obs[:, 0] == value).all() and (policy[:, 1] == value).all()
    assert w.capacity <= 100  # memory follows W, bounded by the largest window


def test_samples_only_the_newest_window_and_fresh_rows_as_often_as_old():
    rng = np.random.default_rng(0)
    w = ReplayWindow(obs_size=3, num_actions=2, max_capacity=10_000, initial_capacity=16)
    w.set_window(2000)
    w.add(*_rows(0, 3000))  # rows 0..999 dropped out (capacity follows W)
    w.add(*_rows(3000, 500))  # the "fresh" rows: newest quarter of the window
    draws = np.concatenate([w.sample(rng, 1000)[2] for _ in range(200)])  # 200k samples
    assert draws.min() >= 1500 and draws.max() <= 3499  # newest 2000 only
    fresh = (draws >= 3000).mean()
    # Expected 0.25; the binomial sd is 0.001, so a 0.01 tolerance is 10 sd (and the seed is fixed).
    assert abs(fresh - 0.25) < 0.01
    # Uniform over the window: each decile of row age gets ~10% of the draws.
    counts = np.bincount(((draws - 1500) // 200).astype(int), minlength=10) / len(draws)
    assert np.all(np.abs(counts - 0.1) < 0.01)


def _positions(w: ReplayWindow) -> dict[float, tuple[float, float]]:
    """Distinct position (its obs[0]) -> (mean policy[0], mean value) as the window samples them."""
    obs, policy, value = w.sample_arrays()
    n = len(w.positions)
    return {float(obs[i, 0]): (float(policy[i, 0]), float(value[i])) for i in range(n)}


def _brute_force(w: ReplayWindow) -> dict[float, tuple[float, float]]:
    """The same from the newest W rows, averaged from scratch."""
    obs, policy, value = w.newest(w.sample_size)
    out = {}
    for key in np.unique(obs[:, 0]):
        at = obs[:, 0] == key
        out[float(key)] = (float(policy[at, 0].mean()), float(value[at].mean()))
    return out


def _dup_rows(keys, policy0, values):
    keys = np.asarray(keys, np.float32)
    obs = np.repeat(keys[:, None], 3, axis=1)
    policy = np.stack([np.asarray(policy0, np.float32), 1 - np.asarray(policy0, np.float32)], axis=1)
    return obs, policy, np.asarray(values, np.float32)


def test_position_averaging_samples_duplicates_once_with_mean_targets():
    w = ReplayWindow(obs_size=3, num_actions=2, max_capacity=100, average_positions=True)
    w.set_window(100)
    w.add(*_dup_rows([7, 7, 7, 9], [1.0, 0.0, 0.5, 0.25], [1.0, -1.0, 1.0, 0.0]))
    assert w.sample_size == 4 and len(w.positions) == 2
    assert _positions(w) == {7.0: (0.5, pytest.approx(1 / 3)), 9.0: (0.25, 0.0)}
    # Each position is one sample: the one row of 9 is drawn as often as the three of 7.
    draws = w.sample(np.random.default_rng(0), 20_000)[0][:, 0]
    assert set(np.unique(draws)) == {7.0, 9.0} and abs((draws == 9.0).mean() - 0.5) < 0.02


def test_position_averaging_follows_rows_leaving_the_window():
    # Fixed window of 3 rows, the ring larger than the window: rows leave the window before
    # the ring overwrites them.
    w = ReplayWindow(obs_size=3, num_actions=2, max_capacity=10, initial_capacity=10, average_positions=True)
    w.set_window(3)
    w.add(*_dup_rows([7, 7, 9], [1.0, 0.0, 0.5], [1.0, -1.0, 0.0]))
    assert _positions(w)[7.0] == (0.5, 0.0)
    w.add(*_dup_rows([5], [0.0], [1.0]))  # the first 7 leaves: 7 is now its second row alone
    assert _positions(w) == {7.0: (0.0, -1.0), 9.0: (0.5, 0.0), 5.0: (0.0, 1.0)}
    w.add(*_dup_rows([5], [1.0], [0.0]))  # the last 7 leaves
    assert _positions(w) == {9.0: (0.5, 0.0), 5.0: (0.5, 0.5)}
    w.set_window(5)  # the window grows over rows the ring still holds: they count again
    assert _positions(w) == _brute_force(w) and _positions(w)[7.0] == (0.5, 0.0)


@pytest.mark.parametrize("max_capacity", [40, 400])
def test_position_averaging_matches_a_rebuild_as_the_window_moves(max_capacity):
    rng = np.random.default_rng(1)
    w = ReplayWindow(
        obs_size=3, num_actions=2, max_capacity=max_capacity, initial_capacity=8, average_positions=True
    )
    seen = 0
    for _ in range(60):
        n = int(rng.integers(1, 30))
        seen += n
        w.set_window(window_size(seen, m=20, alpha=0.75, beta=0.4, cap=max_capacity))
        # Few distinct keys, so positions repeat, and policies / values that differ per row.
        w.add(*_dup_rows(rng.integers(0, 12, n), rng.random(n), rng.uniform(-1, 1, n)))
        got, want = _positions(w), _brute_force(w)
        assert got.keys() == want.keys()
        for key, (p, v) in want.items():
            assert got[key] == (pytest.approx(p, abs=1e-5), pytest.approx(v, abs=1e-5))
        assert sum(w.positions.rows_at(np.full(3, k, np.float32)) for k in got) == w.sample_size
