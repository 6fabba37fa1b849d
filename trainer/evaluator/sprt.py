"""Sequential probability ratio test and Elo estimate for a match played in colour-swapped pairs.

The test is the generalised SPRT engine testers use (fishtest, after Michel Van den Bergh):
each sample is one game pair's mean score (0, 1/4, 1/2, 3/4 or 1: the pentanomial), and the
log-likelihood ratio compares the two distributions closest to the observed one (maximum
likelihood) whose expected score is that of H0 (Elo `elo0`) and of H1 (Elo `elo1`). Scoring
pairs rather than games takes out the first-move advantage, which would otherwise inflate
the variance. Elo is the logistic one: expected score 1 / (1 + 10^(-elo/400)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# A pair's mean score: both lost, a loss and a draw, ..., both won.
PAIR_SCORES = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
# Added to every outcome count, as fishtest does, so a one-sided sample (all wins) still has
# a maximum-likelihood distribution for any expected score strictly inside (0, 1).
PRIOR_COUNT = 1e-3

Decision = Literal["H1", "H0", "continue"]


def score_from_elo(elo: float) -> float:
    return 1.0 / (1.0 + 10.0 ** (-elo / 400.0))


def elo_from_score(score: float) -> float:
    """Logistic Elo difference of a score; +-inf at 1 and 0."""
    if score <= 0.0:
        return -math.inf
    if score >= 1.0:
        return math.inf
    return 400.0 * math.log10(score / (1.0 - score))


def pentanomial(pair_results: Sequence[tuple[int, int]]) -> list[int]:
    """Counts of pair scores 0, 1/2, 1, 3/2, 2 from (result, result) per pair, each result
    +1 win, 0 draw, -1 loss for the player under test."""
    counts = [0] * 5
    for a, b in pair_results:
        counts[a + b + 2] += 1
    return counts


def _mle_with_mean(probs: np.ndarray, scores: np.ndarray, mean: float) -> np.ndarray:
    """The distribution q on `scores` with expected score `mean` maximising sum p log q.

    Lagrange gives q_i = p_i / (1 + lam (a_i - mean)) with lam the root of
    sum p_i (a_i - mean) / (1 + lam (a_i - mean)) = 0, which is decreasing in lam on the
    interval where every q_i is positive, so bisection finds it.
    """
    d = scores - mean
    lo = -1.0 / d.max() if d.max() > 0 else -1e12
    hi = -1.0 / d.min() if d.min() < 0 else 1e12
    span = hi - lo
    lo, hi = lo + 1e-12 * span, hi - 1e-12 * span
    for _ in range(200):
        lam = 0.5 * (lo + hi)
        g = float(np.sum(probs * d / (1.0 + lam * d)))
        if g > 0:
            lo = lam
        else:
            hi = lam
    q = probs / (1.0 + lam * d)
    return q / q.sum()


def llr(counts: Sequence[float], elo0: float, elo1: float, scores: np.ndarray = PAIR_SCORES) -> float:
    """Generalised log-likelihood ratio of H1 (Elo `elo1`) over H0 (Elo `elo0`) for outcome
    `counts` on `scores` (by default the pentanomial counts of game pairs)."""
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() == 0:
        return 0.0
    c = c + PRIOR_COUNT
    n = c.sum()
    p = c / n
    q0 = _mle_with_mean(p, scores, score_from_elo(elo0))
    q1 = _mle_with_mean(p, scores, score_from_elo(elo1))
    return float(n * np.sum(p * np.log(q1 / q0)))


def parse_elo_bounds(text: str) -> tuple[float, float]:
    """The text "ELO0,ELO1" (ELO0 below ELO1) as `--sprt` and `--gate-sprt` take them."""
    try:
        elo0, elo1 = (float(p) for p in text.split(","))
    except ValueError:
        raise ValueError("expected ELO0,ELO1 (two numbers, e.g. 0,20)") from None
    if not elo0 < elo1:
        raise ValueError(f"ELO0 must be below ELO1, got {elo0:g},{elo1:g}")
    return elo0, elo1


def bounds(alpha: float, beta: float) -> tuple[float, float]:
    """Wald's bounds: accept H0 at or below the first, H1 at or above the second."""
    return math.log(beta / (1.0 - alpha)), math.log((1.0 - beta) / alpha)


@dataclass
class EloEstimate:
    elo: float
    ci: tuple[float, float]  # 95%; +-inf where the score interval reaches 0 or 1


def elo_estimate(counts: Sequence[float], scores: np.ndarray = PAIR_SCORES, z: float = 1.96) -> EloEstimate:
    """Elo of the mean score, with the normal interval of that mean mapped through the Elo
    curve (the variance is the sample's own, so with pairs it is the pentanomial one).

    The interval is computed as if one more sample at each extreme had been seen (like the
    Agresti-Coull interval): a short run of wins alone has zero sample variance, and its
    interval should still have a finite lower end.
    """
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum()
    if n == 0:
        return EloEstimate(0.0, (-math.inf, math.inf))
    mean = float(np.sum(c * scores) / n)
    padded = c.copy()
    padded[np.argmin(scores)] += 1
    padded[np.argmax(scores)] += 1
    p = padded / padded.sum()
    centre = float(np.sum(p * scores))
    half = z * math.sqrt(float(np.sum(p * (scores - centre) ** 2)) / padded.sum())
    return EloEstimate(elo_from_score(mean), (elo_from_score(centre - half), elo_from_score(centre + half)))


@dataclass
class SprtResult:
    elo0: float
    elo1: float
    alpha: float
    beta: float
    llr: float
    lower: float
    upper: float
    decision: Decision
    pairs: int
    pentanomial: list[int]

    def to_dict(self) -> dict:
        return {
            "elo0": self.elo0,
            "elo1": self.elo1,
            "alpha": self.alpha,
            "beta": self.beta,
            "llr": self.llr,
            "lower_bound": self.lower,
            "upper_bound": self.upper,
            "result": self.decision,
            "pairs": self.pairs,
            "pentanomial": list(self.pentanomial),
        }


def sprt(
    pair_results: Sequence[tuple[int, int]], elo0: float, elo1: float, alpha: float = 0.05, beta: float = 0.05
) -> SprtResult:
    """The test's state after `pair_results`: H1 (stronger by `elo1`) accepted, H0 (`elo0`)
    accepted, or continue."""
    counts = pentanomial(pair_results)
    value = llr(counts, elo0, elo1)
    lower, upper = bounds(alpha, beta)
    decision: Decision = "H1" if value >= upper else "H0" if value <= lower else "continue"
    return SprtResult(elo0, elo1, alpha, beta, value, lower, upper, decision, len(pair_results), counts)
