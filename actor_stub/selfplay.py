"""The self-play loop of one actor process.

`parallel_games` games run in lockstep: every round searches all their positions at once
(one batched model call per simulation round), then each game makes its move. A finished
game is written whole, in one transaction, and its slot starts a new game. Each game keeps
the model it started with, so a hot reload swaps models only between games while the other
slots carry on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

import numpy as np

from actor_stub.config import ActorConfig
from actor_stub.model_watcher import ModelWatcher
from trainer.games import Game, GameState, get_game
from trainer.metrics.actor_metrics import ActorMetrics
from trainer.onnx_policy import OnnxPolicy
from trainer.replay.backend import redact_url
from trainer.replay.writer import PlyRecord, ReplayWriter
from trainer.runtime import StopFlag
from trainer.search.gumbel import gumbel_search
from trainer.search.mcts import (
    CachedEvaluator,
    LeafEvaluator,
    MCTSConfig,
    Node,
    ObsEvaluator,
    RolloutEvaluator,
    evaluate_grouped,
    search,
    select_action,
)

log = logging.getLogger("actor_stub")


@dataclass
class GameInFlight:
    episode_id: str
    state: GameState
    policy: OnnxPolicy | None
    evaluator: LeafEvaluator
    plies: list[PlyRecord] = field(default_factory=list)
    tree: Node | None = None  # the searched subtree of the position, with --reuse-tree
    started: float = field(default_factory=time.monotonic)


@dataclass
class SearchedMove:
    action: int
    policy: np.ndarray  # the policy target written to policy_probs
    value: float  # root value, side-to-move view (mcts_value)
    subtree: Node | None  # the played move's subtree, to search the next ply from (--reuse-tree)


def search_moves(
    game: Game,
    states: list[GameState],
    evaluators: list[LeafEvaluator],
    trees: list[Node | None],
    cfg: ActorConfig,
    mcts: MCTSConfig,
    rng: np.random.Generator,
) -> list[SearchedMove]:
    """One searched self-play move per position, as `cfg` (--search, --reuse-tree, --sims)
    says; `trees` are the positions' kept subtrees (None: search from scratch)."""
    if cfg.search == "gumbel":
        found = gumbel_search(game, states, evaluators, mcts, rng)
        return [SearchedMove(r.action, r.policy, r.value, None) for r in found]
    results = search(game, states, evaluators, mcts, rng, add_noise=True, trees=trees)
    out = []
    for state, r in zip(states, results):
        a = select_action(r.visits, game.legal_mask(state), state.ply, mcts.temperature_plies, rng)
        out.append(SearchedMove(a, r.policy, r.value, r.subtree(a) if cfg.reuse_tree else None))
    return out


def default_actor_id() -> str:
    return f"py-{socket.gethostname()}-{os.getpid()}"


class SelfPlayWorker:
    def __init__(
        self, cfg: ActorConfig, episodes: int, seed: int | None, stop: StopFlag, worker_index: int = 0
    ):
        """`stop` set = finish the games in flight and start no new one (first signal)."""
        self.cfg = cfg
        self.game: Game = get_game(cfg.env_id)
        self.episodes = episodes  # 0 = forever
        self.rng = np.random.default_rng(seed)
        self.stop = stop
        self.actor_id = (cfg.actor_id or default_actor_id()) + (
            f"-w{worker_index}" if cfg.workers > 1 else ""
        )
        self.mcts = MCTSConfig(
            sims=cfg.sims,
            c_puct=cfg.c_puct,
            dirichlet_alpha=cfg.dirichlet_alpha,
            dirichlet_weight=cfg.dirichlet_weight,
            temperature_plies=cfg.temperature_plies,
        )
        self.rollout = RolloutEvaluator(self.rng)
        self.watcher = ModelWatcher(
            cfg.model_dir, self.game.spec, cfg.threads, cfg.poll_interval, int8=cfg.int8
        )
        self._current: tuple[OnnxPolicy, LeafEvaluator] | None = None
        self.started = 0
        self.games_written = 0
        self.plies_written = 0
        self.metrics = ActorMetrics(cfg.env_id, self.actor_id, lambda: self.watcher.policy is not None)

    # --- games -------------------------------------------------------------------------------
    def _evaluator_for(self, policy: OnnxPolicy | None) -> LeafEvaluator:
        if policy is None:
            return self.rollout
        # One adapter per model, so all games on the current model share one batched call.
        if self._current is None or self._current[0] is not policy:
            evaluator: LeafEvaluator = ObsEvaluator(self.metrics.timed_inference(policy.evaluate))
            if self.cfg.eval_cache > 0:
                evaluator = CachedEvaluator(evaluator, self.cfg.eval_cache)
            self._current = (policy, evaluator)
        return self._current[1]

    def _new_game(self) -> GameInFlight:
        self.started += 1
        episode_id = f"{self.actor_id}-ep-{self.started}-{int(time.time())}"
        policy = self.watcher.policy
        return GameInFlight(episode_id, self.game.initial_state(), policy, self._evaluator_for(policy))

    def _may_start(self) -> bool:
        return not self.stop.is_set() and (self.episodes == 0 or self.started < self.episodes)

    def _choose_moves(self, games: list[GameInFlight]) -> list[tuple[int, np.ndarray | None, float]]:
        """(action, policy target or None for uniform, root value) per game."""
        g = self.game
        if self.cfg.sims > 0:
            t0 = time.monotonic()
            moves = search_moves(
                g,
                [x.state for x in games],
                [x.evaluator for x in games],
                [x.tree for x in games],
                self.cfg,
                self.mcts,
                self.rng,
            )
            self.metrics.searched(time.monotonic() - t0, len(games), self.cfg.sims)
            for x, m in zip(games, moves):
                x.tree = m.subtree
            return [(m.action, m.policy, m.value) for m in moves]
        # No search: uniform random without a model (uniform policy_probs, per the contract),
        # the raw policy with one.
        out = []
        modelled = [x for x in games if x.policy is not None]
        priors: dict[int, tuple[np.ndarray, float]] = {}
        if modelled:
            ps, vs = evaluate_grouped(g, [x.state for x in modelled], [x.evaluator for x in modelled])
            priors = {id(x): (p, v) for x, p, v in zip(modelled, ps, vs)}
        for x in games:
            legal = g.legal_mask(x.state)
            if id(x) in priors:
                p, v = priors[id(x)]
                a = select_action(p, legal, x.state.ply, self.mcts.temperature_plies, self.rng)
                out.append((a, p.astype(np.float32), float(v)))
            else:
                out.append((int(self.rng.choice(np.flatnonzero(legal))), None, 0.0))
        return out

    def _reload_model(self) -> None:
        t0 = time.monotonic()
        if self.watcher.maybe_reload():
            self.metrics.model_reloaded(time.monotonic() - t0)

    # --- loop --------------------------------------------------------------------------------
    def run(self, writer: ReplayWriter) -> None:
        slots: list[GameInFlight] = []
        t0 = last_log = time.monotonic()
        games_at_log = plies_at_log = 0
        self._reload_model()
        log.info(
            "%s: %s, %d sims, %d parallel games, model step %s, writing to %s",
            self.actor_id,
            self.cfg.env_id,
            self.cfg.sims,
            self.cfg.parallel_games,
            self.watcher.step_label(self.watcher.policy),
            redact_url(self.cfg.db),
        )
        try:
            while True:
                if len(slots) < self.cfg.parallel_games and self._may_start():
                    self._reload_model()  # between games only: new games get the new model
                    while len(slots) < self.cfg.parallel_games and self._may_start():
                        slots.append(self._new_game())
                if not slots:
                    break
                moves = self._choose_moves(slots)
                still: list[GameInFlight] = []
                for x, (a, probs, value) in zip(slots, moves):
                    x.plies.append(PlyRecord(x.state, a, probs, value))
                    x.state = self.game.apply(x.state, a)
                    if x.state.is_terminal:
                        t_write = time.monotonic()
                        writer.write_game(
                            x.episode_id, x.plies, model_step=x.policy.step if x.policy else None
                        )
                        self.metrics.stored(time.monotonic() - t_write, len(x.plies))
                        self.metrics.game_finished(x.state.winner, len(x.plies), time.monotonic() - x.started)
                        self.games_written += 1
                        self.plies_written += len(x.plies)
                    else:
                        still.append(x)
                slots = still
                now = time.monotonic()
                if now - last_log >= self.cfg.log_interval:
                    dt = now - last_log
                    log.info(
                        "%s: %d games (%.2f games/s, %.1f plies/s), model step %s",
                        self.actor_id,
                        self.games_written,
                        (self.games_written - games_at_log) / dt,
                        (self.plies_written - plies_at_log) / dt,
                        self.watcher.step_label(self.watcher.policy),
                        extra={
                            "fields": {
                                "actor_id": self.actor_id,
                                "games": self.games_written,
                                "games_per_sec": (self.games_written - games_at_log) / dt,
                                "plies_per_sec": (self.plies_written - plies_at_log) / dt,
                                "model_step": self.watcher.policy.step if self.watcher.policy else None,
                            }
                        },
                    )
                    last_log, games_at_log, plies_at_log = now, self.games_written, self.plies_written
        finally:
            dt = max(time.monotonic() - t0, 1e-9)
            log.info(
                "%s: done, %d games, %d plies in %.1fs (%.2f games/s, %.1f plies/s)",
                self.actor_id,
                self.games_written,
                self.plies_written,
                dt,
                self.games_written / dt,
                self.plies_written / dt,
            )
            self.watcher.close()
