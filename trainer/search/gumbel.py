"""Gumbel root search (Danihelka et al., 2022, "Policy improvement by planning with Gumbel").

At the root, Gumbel noise added to the prior logits samples `considered` moves without
replacement; sequential halving then spends the simulations on them in phases, each phase
keeping the better half by g + logits + sigma(q). Below the root the search is the usual PUCT
(`mcts.search` does the simulations). The move played is the survivor with the highest
g + logits + sigma(q); the policy target is softmax(logits + sigma(completed q)) over legal
moves, where an unvisited move's q is the mixed value estimate. This improves on the prior
even with very few simulations, where visit counts of PUCT + Dirichlet say little.

sigma(q) = (c_visit + max visits) * c_scale * q, with q rescaled to [0, 1] over the legal moves
(the defaults of DeepMind's mctx).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.games import Game, GameState
from trainer.search.mcts import LeafEvaluator, MCTSConfig, Node, search


@dataclass
class GumbelConfig:
    considered: int = 16  # moves sampled at the root for sequential halving
    c_visit: float = 50.0
    c_scale: float = 0.1


@dataclass
class GumbelResult:
    action: int  # the move to play
    policy: np.ndarray  # [A] float32 improved policy: the training target, 0 on illegal moves
    visits: np.ndarray  # [A] root visit counts
    value: float  # root value, side-to-move view (mean of backed-up values)


class SequentialHalving:
    """The root schedule of one tree: which move each simulation starts with."""

    def __init__(self, sims: int, considered: int, gumbel: np.ndarray, cfg: GumbelConfig):
        self.sims, self.gumbel, self.cfg = sims, gumbel, cfg
        self.remaining: list[int] | None = None
        self.considered = considered
        self.phases = max(1, math.ceil(math.log2(considered))) if considered > 1 else 1
        self.queue: list[int] = []

    def next_action(self, root: Node) -> int:
        if self.remaining is None:
            scores = self.gumbel + _logits(root)
            self.remaining = _top(scores, root.legal, self.considered)
        elif not self.queue and len(self.remaining) > 1:
            # The root's network value is not kept in the tree; the mean backed-up value
            # stands in for it (it only places unvisited moves in the rescaling).
            mean_value = float(root.W.sum() / max(root.N.sum(), 1.0))
            scores = self.gumbel + _logits(root) + sigma(completed_q(root, mean_value), root, self.cfg)
            self.remaining = _top(
                scores, root.legal, math.ceil(len(self.remaining) / 2), among=self.remaining
            )
        if not self.queue:
            per_move = max(1, self.sims // (self.phases * len(self.remaining)))
            self.queue = [a for _ in range(per_move) for a in self.remaining]
        return self.queue.pop(0)


def _logits(root: Node) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(root.legal, np.log(np.maximum(root.priors, 1e-12)), -np.inf)


def _top(scores: np.ndarray, legal: np.ndarray, k: int, among: Sequence[int] | None = None) -> list[int]:
    candidates = np.flatnonzero(legal) if among is None else np.asarray(among)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    return [int(a) for a in order[:k]]


def completed_q(root: Node, value_estimate: float) -> np.ndarray:
    """Q of visited moves (root mover's view); unvisited moves get the mixed value: the
    network's root value blended with the prior-weighted Q of the visited moves."""
    n = root.N
    visited = (n > 0) & root.legal
    q = np.divide(root.W, n, out=np.zeros_like(root.W), where=n > 0)
    mixed = value_estimate
    if visited.any():
        p_visited = root.priors[visited].sum()
        weighted_q = (root.priors[visited] * q[visited]).sum() / max(p_visited, 1e-12)
        mixed = (value_estimate + n.sum() * weighted_q) / (1.0 + n.sum())
    return np.where(visited, q, mixed)


def sigma(q: np.ndarray, root: Node, cfg: GumbelConfig) -> np.ndarray:
    legal_q = q[root.legal]
    lo, hi = legal_q.min(), legal_q.max()
    scaled = (q - lo) / (hi - lo) if hi > lo else np.zeros_like(q)
    return (cfg.c_visit + root.N.max()) * cfg.c_scale * scaled


def improved_policy(root: Node, value_estimate: float, cfg: GumbelConfig) -> np.ndarray:
    z = _logits(root) + sigma(completed_q(root, value_estimate), root, cfg)
    z = np.where(root.legal, z - z[root.legal].max(), -np.inf)
    p = np.exp(z)
    return (p / p.sum()).astype(np.float32)


def gumbel_search(
    game: Game,
    roots: Sequence[GameState],
    evaluators: LeafEvaluator | Sequence[LeafEvaluator],
    cfg: MCTSConfig,
    rng: np.random.Generator,
    gumbel: GumbelConfig | None = None,
    add_noise: bool = True,
) -> list[GumbelResult]:
    """`cfg.sims` simulations per root with Gumbel sequential halving at the root (PUCT with
    `cfg.c_puct` below it). `add_noise` False plays without Gumbel noise (evaluation)."""
    gcfg = gumbel or GumbelConfig()
    a = game.spec.num_actions
    schedules = []
    for state in roots:
        g = rng.gumbel(size=a) if add_noise else np.zeros(a)
        considered = min(gcfg.considered, int(game.legal_mask(state).sum()), max(cfg.sims, 1))
        schedules.append(SequentialHalving(cfg.sims, considered, g, gcfg))
    results = search(
        game,
        roots,
        evaluators,
        cfg,
        rng,
        add_noise=False,
        root_action=lambda t, root: schedules[t].next_action(root),
    )
    out = []
    for r, sched in zip(results, schedules):
        root = r.root
        assert root is not None
        scores = sched.gumbel + _logits(root) + sigma(completed_q(root, r.root_estimate), root, gcfg)
        survivors = sched.remaining if sched.remaining else list(np.flatnonzero(root.legal))
        action = _top(scores, root.legal, 1, among=survivors)[0]
        out.append(GumbelResult(action, improved_policy(root, r.root_estimate, gcfg), r.visits, r.value))
    return out
