"""The SPRT and Elo statistics of the evaluator, against hand computations and real games."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.evaluator import play_match
from trainer.evaluator.sprt import (
    PAIR_SCORES,
    bounds,
    elo_estimate,
    elo_from_score,
    llr,
    pentanomial,
    score_from_elo,
    sprt,
)
from trainer.games import get_game
from trainer.search.players import PerfectPlayer, RandomPlayer


def test_elo_and_score_are_inverse_logistic():
    assert elo_from_score(0.5) == 0.0
    assert elo_from_score(0.75) == pytest.approx(400 * math.log10(3))
    assert score_from_elo(400 * math.log10(3)) == pytest.approx(0.75)
    assert elo_from_score(1.0) == math.inf and elo_from_score(0.0) == -math.inf


def test_wald_bounds():
    lower, upper = bounds(0.05, 0.05)
    assert upper == pytest.approx(math.log(19)) and lower == pytest.approx(-math.log(19))
    lower, upper = bounds(0.05, 0.1)
    assert lower == pytest.approx(math.log(0.1 / 0.95)) and upper == pytest.approx(math.log(0.9 / 0.05))


def test_llr_without_draws_is_the_bernoulli_likelihood_ratio():
    """With two outcomes the distribution of a given mean is unique, so the generalised LLR is
    Wald's: W log(s1/s0) + L log((1-s1)/(1-s0))."""
    s0, s1 = score_from_elo(0), score_from_elo(10)
    wins, losses = 60, 40
    by_hand = wins * math.log(s1 / s0) + losses * math.log((1 - s1) / (1 - s0))
    assert llr([losses, wins], 0, 10, np.array([0.0, 1.0])) == pytest.approx(by_hand, rel=1e-4)


def test_pentanomial_llr_is_close_to_its_normal_approximation_and_antisymmetric():
    counts = [100, 400, 900, 450, 150]
    s0, s1 = score_from_elo(0), score_from_elo(5)
    p = np.array(counts) / sum(counts)
    mean = float(np.sum(p * PAIR_SCORES))
    var = float(np.sum(p * (PAIR_SCORES - mean) ** 2))
    normal = sum(counts) * (s1 - s0) * (2 * mean - s0 - s1) / (2 * var)
    assert llr(counts, 0, 5) == pytest.approx(normal, rel=0.01)
    assert llr(counts, 5, 0) == pytest.approx(-llr(counts, 0, 5))
    assert llr([0] * 5, 0, 5) == 0.0


def test_pentanomial_counts_and_decisions():
    assert pentanomial([(1, 1), (1, 0), (0, 0), (-1, 1), (-1, 0), (-1, -1)]) == [1, 1, 2, 1, 1]
    wins = sprt([(1, 1)] * 30, 0, 50)
    assert wins.decision == "H1" and wins.llr >= wins.upper and wins.pairs == 30
    losses = sprt([(-1, -1)] * 30, 0, 50)
    assert losses.decision == "H0" and losses.llr <= losses.lower
    assert sprt([(1, -1)], 0, 50).decision == "continue"


def test_elo_interval():
    est = elo_estimate([100, 400, 900, 450, 150])
    assert est.ci[0] < est.elo < est.ci[1]
    assert est.elo == pytest.approx(elo_from_score(0.5 + 0.25 * (450 + 2 * 150 - 400 - 2 * 100) / 2000))
    # A short run of wins: infinite estimate, but a finite lower end to its interval.
    wins = elo_estimate([0, 0, 0, 0, 10])
    assert wins.elo == math.inf and 0 < wins.ci[0] < math.inf and wins.ci[1] == math.inf
    even = elo_estimate([0, 0, 50, 0, 0])
    assert even.elo == 0.0 and even.ci[0] == pytest.approx(-even.ci[1])


def test_a_clearly_stronger_player_accepts_h1_within_a_few_pairs():
    game = get_game("tictactoe")
    rng = np.random.default_rng(0)
    records, verdict = play_match(game, PerfectPlayer(game, rng), RandomPlayer(game, rng), 400, (0, 50))
    assert verdict is not None and verdict.decision == "H1"
    assert len(records) <= 64 and verdict.pairs == len(records) // 2
    assert [r.model_first for r in records[:4]] == [True, False, True, False]  # pairs swap colours


def test_equal_players_rarely_accept_h1():
    game = get_game("tictactoe")
    accepted = 0
    runs = 20
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        _, verdict = play_match(game, RandomPlayer(game, rng), RandomPlayer(game, rng), 400, (0, 50))
        accepted += verdict.decision == "H1"
    assert accepted <= 3  # alpha 0.05: about 1 expected
