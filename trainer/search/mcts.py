"""PUCT Monte Carlo tree search over many games at once, with batched leaf evaluation.

One process plays many games; each simulation round descends every game's tree to one new
leaf, then evaluates all those leaves in one call (one onnxruntime run per round instead of
one per leaf). With one leaf per tree per round no virtual loss is needed, and the search is
exactly sequential PUCT within each tree.

Value convention: a node's edge statistics `W[a] / N[a]` are from the view of the player to
move at that node; an evaluator returns values from the view of the side to move at the leaf.
Both games alternate turns, so each level of the backup flips the sign. Terminal nodes are
scored exactly (+1 / 0 / -1), never by the evaluator.

Two savings for self-play, both off unless asked for: a caller may hand back the subtree of
the move it played as the next ply's root (`SearchResult.subtree`; its visits count toward
`sims`), and `CachedEvaluator` answers a position it has already evaluated from memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from trainer.games import DRAW, Game, GameState

# evaluate(obs_batch [n, obs_size] float32, legal_masks [n, A] bool) -> (priors [n, A], values [n])
ObsEvaluateFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class LeafEvaluator(Protocol):
    def evaluate_states(self, game: Game, states: Sequence[GameState]) -> tuple[np.ndarray, np.ndarray]:
        """(priors [n, A] summing to 1 over legal moves, values [n] from side-to-move view)."""


class ObsEvaluator:
    """Adapts an observation-batch function (e.g. `OnnxPolicy.evaluate`) to tree leaves."""

    def __init__(self, fn: ObsEvaluateFn):
        self.fn = fn

    def evaluate_states(self, game: Game, states: Sequence[GameState]) -> tuple[np.ndarray, np.ndarray]:
        obs = np.stack([game.encode(s) for s in states])
        priors, values = self.fn(obs, game.spec.legal_masks(obs))
        return np.asarray(priors, dtype=np.float64), np.asarray(values, dtype=np.float64).reshape(-1)


class CachedEvaluator:
    """A model evaluator that remembers positions: transpositions and positions repeated
    across simulations, plies and games cost no network call. The cache belongs to one model
    (make a new one when the model changes); the oldest entries go first when it is full.
    Only for deterministic evaluators: a cached rollout would freeze one random playout."""

    def __init__(self, inner: LeafEvaluator, max_entries: int = 200_000):
        self.inner = inner
        self.max_entries = max_entries
        self.cache: dict[tuple, tuple[np.ndarray, float]] = {}
        self.hits = 0
        self.misses = 0

    def evaluate_states(self, game: Game, states: Sequence[GameState]) -> tuple[np.ndarray, np.ndarray]:
        keys = [(s.board, s.to_move) for s in states]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if missing:
            by_key = {(s.board, s.to_move): s for s in states}
            priors, values = self.inner.evaluate_states(game, [by_key[k] for k in missing])
            for k, p, v in zip(missing, priors, values):
                self.cache[k] = (p, float(v))
            while len(self.cache) > self.max_entries:
                del self.cache[next(iter(self.cache))]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        found = [self.cache.get(k) for k in keys]
        if any(f is None for f in found):  # a tiny cache evicted part of this very batch
            return self.inner.evaluate_states(game, states)
        return np.stack([f[0] for f in found]), np.array([f[1] for f in found])


class RolloutEvaluator:
    """No model yet: uniform priors and the result of random playouts, so the first self-play
    data already prefers wins over losses instead of being pure noise."""

    def __init__(self, rng: np.random.Generator, rollouts: int = 1):
        self.rng = rng
        self.rollouts = rollouts

    def evaluate_states(self, game: Game, states: Sequence[GameState]) -> tuple[np.ndarray, np.ndarray]:
        masks = np.stack([game.legal_mask(s) for s in states]).astype(np.float64)
        priors = masks / np.maximum(masks.sum(axis=1, keepdims=True), 1.0)
        values = np.array(
            [np.mean([random_rollout(game, s, self.rng) for _ in range(self.rollouts)]) for s in states]
        )
        return priors, values


def terminal_value(state: GameState) -> float:
    """Exact value of a finished game from the view of `state.to_move`."""
    if state.winner == DRAW:
        return 0.0
    return 1.0 if state.winner == state.to_move else -1.0


def random_rollout(game: Game, state: GameState, rng: np.random.Generator) -> float:
    """Play uniformly random moves to the end; the result from `state.to_move`'s view."""
    s = state
    # Draw random numbers in bulk: one Generator call per move dominates a short playout.
    draws = rng.random(game.spec.cells + 1)
    i = 0
    while not s.is_terminal:
        legal = np.flatnonzero(game.legal_mask(s))
        s = game.apply(s, int(legal[int(draws[i] * len(legal))]))
        i += 1
    if s.winner == DRAW:
        return 0.0
    return 1.0 if s.winner == state.to_move else -1.0


@dataclass
class MCTSConfig:
    sims: int = 100
    c_puct: float = 1.5
    dirichlet_alpha: float = 0.3
    dirichlet_weight: float = 0.25
    temperature_plies: int = 0  # sample proportionally to visits for plies < this, then argmax
    # "uct": UCB1 with `c_uct`, every move tried once first in random order, priors unused:
    # the rollout MCTS of the literature (OpenSpiel's MCTSBot), which "MCTS-N" opponents mean.
    selection: Literal["puct", "uct"] = "puct"
    c_uct: float = 2.0
    # MCTS-Solver: game results proven in the tree back up exactly; a proven move is scored
    # by its result alone, and a tree whose root is proven stops searching.
    solve: bool = False


class Node:
    """One searched position. Its edge statistics are Python lists: the search reads and
    writes one entry at a time on boards of a handful of moves, where list arithmetic costs a
    fraction of numpy's per-call overhead. `N`, `W` and `priors` give numpy copies for the
    vector code (UCT, the solver, Gumbel at the root, results)."""

    __slots__ = ("state", "legal", "moves", "n", "w", "p", "total", "children", "proven")

    def __init__(self, state: GameState, legal: np.ndarray, priors: np.ndarray):
        self.state = state
        self.legal = legal
        self.moves: list[int] = np.flatnonzero(legal).tolist()
        a = len(legal)
        self.n = [0.0] * a  # visits per move
        self.w = [0.0] * a  # summed values per move, this node's mover's view
        self.p: list[float] = priors.tolist()
        self.total = 0.0  # sum of n, kept for the exploration term
        self.children: dict[int, Node | None] = {}
        self.proven = np.full(a, np.nan)  # per move: its proven result for the mover, NaN unknown

    @property
    def N(self) -> np.ndarray:
        return np.array(self.n)

    @property
    def W(self) -> np.ndarray:
        return np.array(self.w)

    @property
    def priors(self) -> np.ndarray:
        return np.array(self.p)

    @priors.setter
    def priors(self, value: np.ndarray) -> None:
        self.p = np.asarray(value, dtype=np.float64).tolist()

    def select(self, cfg: MCTSConfig, rng: np.random.Generator) -> int:
        n = self.N
        w = self.W
        q = np.divide(w, n, out=np.zeros_like(w), where=n > 0)
        if cfg.selection == "uct":
            unknown = np.isnan(self.proven)
            untried = np.flatnonzero(self.legal & unknown & (n == 0))
            if len(untried):
                return int(untried[int(rng.integers(len(untried)))])
            u = cfg.c_uct * np.sqrt(math.log(n.sum() + 1.0) / np.maximum(n, 1.0))
            score = np.where(self.legal, np.where(unknown, q + u, self.proven), -np.inf)
            # Equal scores are common with few rollouts; argmax would always favour the
            # lowest-numbered move.
            best = np.flatnonzero(score == score.max())
            return int(best[0] if len(best) == 1 else best[int(rng.integers(len(best)))])
        # +1 inside the root so the first visit already follows the priors.
        u = cfg.c_puct * self.priors * math.sqrt(n.sum() + 1.0) / (1.0 + n)
        score = q + u if not cfg.solve else np.where(np.isnan(self.proven), q + u, self.proven)
        score = np.where(self.legal, score, -np.inf)
        return int(np.argmax(score))

    def select_puct(self, c_puct: float) -> int:
        """`select` for PUCT without the solver (the search's hottest line): the same
        floating-point operations in the same order per move, so the same scores and, with
        the first of equal scores winning as in np.argmax, the same move. W is 0 where N is,
        so W / max(N, 1) is q. Should every score be NaN (a model answering NaN values), the
        first legal move stands, as np.argmax's first NaN did."""
        n, w, p = self.n, self.w, self.p
        root = math.sqrt(self.total + 1.0)
        best, best_score = self.moves[0], -math.inf
        for a in self.moves:
            na = n[a]
            score = w[a] / (na if na > 1.0 else 1.0) + c_puct * p[a] * root / (1.0 + na)
            if score > best_score:
                best, best_score = a, score
        return best

    def proven_value(self) -> float:
        """This position's proven result for its mover: a proven win among its moves, or the
        best result once every move is proven; NaN while unknown."""
        results = self.proven[self.legal]
        if np.any(results == 1.0):
            return 1.0
        return float(results.max()) if not np.isnan(results).any() else math.nan


@dataclass
class SearchResult:
    visits: np.ndarray  # [A] visit counts at the root
    value: float  # root value, side-to-move view (mean of backed-up values)
    priors: np.ndarray  # [A] root priors (after noise)
    root: Node | None = None
    root_estimate: float = 0.0  # the evaluator's value of a freshly evaluated root

    def best_action(self, rng: np.random.Generator) -> int:
        """The move to play greedily: a proven win, else the most visited move that is not a
        proven loss (MCTS-Solver's choice), ties at random."""
        assert self.root is not None
        proven = np.where(np.isnan(self.root.proven), 0.0, self.root.proven)
        key = proven * (self.visits.max() + 1.0) + self.visits  # the result first, then visits
        key = np.where(self.root.legal, key, -np.inf)
        return int(rng.choice(np.flatnonzero(key == key.max())))

    @property
    def policy(self) -> np.ndarray:
        """Visit distribution: the policy target the replay DB stores."""
        total = self.visits.sum()
        return (self.visits / total).astype(np.float32) if total > 0 else self.priors.astype(np.float32)

    def subtree(self, action: int) -> Node | None:
        """The searched tree below `action`, to pass as the next ply's root (None if that move
        was never expanded or ended the game)."""
        return self.root.children.get(action) if self.root is not None else None


def evaluate_grouped(
    game: Game, states: list[GameState], evaluators: list[LeafEvaluator]
) -> tuple[np.ndarray, np.ndarray]:
    """One evaluator call per distinct evaluator (usually one: all games share the model)."""
    a = game.spec.num_actions
    priors = np.zeros((len(states), a))
    values = np.zeros(len(states))
    groups: dict[int, list[int]] = {}
    for i, ev in enumerate(evaluators):
        groups.setdefault(id(ev), []).append(i)
    for idx in groups.values():
        p, v = evaluators[idx[0]].evaluate_states(game, [states[i] for i in idx])
        priors[idx] = p
        values[idx] = v
    return priors, values


def _normalised_priors(priors: np.ndarray, legal: np.ndarray) -> np.ndarray:
    p = np.where(legal, np.maximum(priors, 0.0), 0.0)
    total = p.sum()
    return p / total if total > 0 else legal / legal.sum()


def search(
    game: Game,
    roots: Sequence[GameState],
    evaluators: LeafEvaluator | Sequence[LeafEvaluator],
    cfg: MCTSConfig,
    rng: np.random.Generator,
    add_noise: bool = False,
    trees: Sequence[Node | None] | None = None,
    root_action: Callable[[int, Node], int] | None = None,
) -> list[SearchResult]:
    """Run `cfg.sims` simulations from each (non-terminal) root, all trees in lockstep.

    `evaluators` is one evaluator for every root or one per root (the actor keeps each game on
    the model it started with, so during a hot reload two models can be in use). `trees`
    optionally gives, per root, the subtree a previous search already built for that position
    (`SearchResult.subtree`, searched with the same evaluator): it keeps its statistics and is
    searched only up to `cfg.sims` visits in all (at least one new simulation); its root gets
    fresh noise on its stored priors. `root_action(t, root)`, if given, picks the first move of
    every simulation of tree t instead of the selection rule (Gumbel root search).
    """
    if isinstance(evaluators, (list, tuple)):
        evs = list(evaluators)
    else:
        evs = [evaluators] * len(roots)  # type: ignore[list-item]
    if len(evs) != len(roots):
        raise ValueError("need one evaluator per root")
    if any(r.is_terminal for r in roots):
        raise ValueError("cannot search from a terminal position")
    if not roots:
        return []

    kept = list(trees) if trees is not None else [None] * len(roots)
    if len(kept) != len(roots):
        raise ValueError("need one tree (or None) per root")
    fresh = [i for i, t in enumerate(kept) if t is None]
    root_priors = np.zeros((len(roots), game.spec.num_actions))
    root_values = np.zeros(len(roots))
    if fresh:
        p, v = evaluate_grouped(game, [roots[i] for i in fresh], [evs[i] for i in fresh])
        root_priors[fresh], root_values[fresh] = p, v
    nodes: list[Node] = []
    for state, p, tree in zip(roots, root_priors, kept):
        if tree is not None and tree.state != state:
            raise ValueError("a reused tree must be rooted at its position")
        legal = game.legal_mask(state)
        p = _normalised_priors(p, legal) if tree is None else tree.priors
        if add_noise and cfg.dirichlet_weight > 0:
            k = int(legal.sum())
            noise = np.zeros_like(p)
            noise[legal] = rng.dirichlet([cfg.dirichlet_alpha] * k)
            p = (1 - cfg.dirichlet_weight) * p + cfg.dirichlet_weight * noise
        if tree is None:
            nodes.append(Node(state, legal, p))
        else:
            tree.priors = p
            nodes.append(tree)
    todo = [cfg.sims if t is None else max(cfg.sims - int(t.total), 1) for t in kept]
    puct = cfg.selection == "puct" and not cfg.solve

    for sim in range(max(todo, default=0)):
        pending: list[tuple[list[tuple[Node, int]], GameState, int]] = []
        for t, root in enumerate(nodes):
            if sim >= todo[t] or (cfg.solve and not math.isnan(root.proven_value())):
                continue
            path: list[tuple[Node, int]] = []
            node = root
            while True:
                if root_action is not None and node is root:
                    a = root_action(t, root)
                elif puct:
                    a = node.select_puct(cfg.c_puct)
                else:
                    a = node.select(cfg, rng)
                path.append((node, a))
                child = node.children.get(a)
                if child is None:
                    break
                node = child
            leaf_state = game.apply(node.state, a)
            if leaf_state.is_terminal:
                # Terminal leaves are never stored as nodes: scored exactly on every visit.
                _backup(path, terminal_value(leaf_state))
                if cfg.solve:
                    node.proven[a] = -terminal_value(leaf_state)
                    _propagate_proven(path)
            else:
                pending.append((path, leaf_state, t))
        if not pending:
            continue
        priors, values = evaluate_grouped(game, [p[1] for p in pending], [evs[p[2]] for p in pending])
        for (path, state, _), p, v in zip(pending, priors, values):
            legal = game.legal_mask(state)
            parent, a = path[-1]
            parent.children[a] = Node(state, legal, _normalised_priors(p, legal))
            _backup(path, float(v))

    results = []
    for node, v0 in zip(nodes, root_values):
        visits = node.N
        n = visits.sum()
        value = float(node.W.sum() / n) if n > 0 else float(v0)
        results.append(SearchResult(visits, value, node.priors, node, float(v0)))
    return results


def _propagate_proven(path: list[tuple[Node, int]]) -> None:
    """After the last move of `path` was proven: each node whose result that settles gives
    its parent's move into it the negated result."""
    for (parent, a), (child, _) in zip(reversed(path[:-1]), reversed(path[1:])):
        value = child.proven_value()
        if math.isnan(value):
            return
        parent.proven[a] = -value


def _backup(path: list[tuple[Node, int]], leaf_value: float) -> None:
    """`leaf_value` is from the leaf's side to move: its parent's mover sees the negation."""
    v = leaf_value
    for node, a in reversed(path):
        v = -v
        node.n[a] += 1.0
        node.w[a] += v
        node.total += 1.0


def select_action(
    visits_or_probs: np.ndarray,
    legal: np.ndarray,
    ply: int,
    temperature_plies: float,
    rng: np.random.Generator,
    temperature: float = 1.0,
) -> int:
    """Temperature schedule: for the first `temperature_plies` plies sample from
    visits^(1/temperature) over legal moves, then play the most visited move (ties broken at
    random, so greedy play still varies)."""
    w = np.where(legal, np.asarray(visits_or_probs, dtype=np.float64), 0.0)
    if w.sum() <= 0:
        w = legal.astype(np.float64)
    if ply < temperature_plies:
        if temperature != 1.0:
            # In log space: w ** (1 / T) overflows float64 for small T.
            with np.errstate(divide="ignore"):
                z = np.log(w) / temperature
            w = np.exp(z - z.max())
        return int(rng.choice(len(w), p=w / w.sum()))
    best = np.flatnonzero((w == w.max()) & legal)
    return int(rng.choice(best))
