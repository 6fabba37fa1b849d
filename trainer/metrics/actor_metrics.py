"""The actor's Prometheus metrics, named like the family's Rust actor (`actor_*`).

A worker always records into its own registry (a few microseconds per game, search or model
call); it is served only with `--metrics-port`. Each worker process has its own registry and
port, told apart by the `actor_id` label of `actor_info`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from trainer.runtime import resident_memory_mb

T = TypeVar("T")

# The rate of finished games is taken over this many seconds.
RATE_HORIZON_S = 60.0
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PLY_BUCKETS = (5, 10, 20, 30, 42, 60, 80, 120, 200)
SIM_BUCKETS = (1, 10, 25, 50, 100, 200, 400, 800, 1600)


class ActorMetrics:
    def __init__(self, game: str, actor_id: str, model_loaded: Callable[[], bool]):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.episodes = Counter("actor_episodes", "Games finished and written.", registry=r)
        self.player1_wins = Counter("actor_player1_wins", "Games won by the first mover.", registry=r)
        self.player2_wins = Counter("actor_player2_wins", "Games won by the second mover.", registry=r)
        self.draws = Counter("actor_draws", "Drawn games.", registry=r)
        self.episodes_per_second = Gauge(
            "actor_episodes_per_second",
            f"Games finished per second over the last {RATE_HORIZON_S:.0f} s.",
            registry=r,
        )
        self.episode_seconds = Histogram(
            "actor_episode_duration_seconds",
            "Wall time of one game, first move to written.",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.episode_steps = Histogram(
            "actor_episode_steps", "Plies per game.", buckets=PLY_BUCKETS, registry=r
        )
        self.searches = Counter(
            "actor_mcts_searches", "MCTS searches (one per position searched).", registry=r
        )
        self.inference_seconds = Histogram(
            "actor_mcts_inference_seconds",
            "One batched onnxruntime call over the leaves of every game in flight.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.search_seconds = Histogram(
            "actor_mcts_search_seconds",
            "One batched search round over every game in flight.",
            buckets=SLOW_BUCKETS,
            registry=r,
        )
        self.simulations = Histogram(
            "actor_mcts_simulations_per_search",
            "Simulations per MCTS search.",
            buckets=SIM_BUCKETS,
            registry=r,
        )
        self.transitions = Counter("actor_transitions_stored", "Rows written to the replay DB.", registry=r)
        self.db_write_seconds = Histogram(
            "actor_db_write_seconds", "One game's replay DB transaction.", buckets=FAST_BUCKETS, registry=r
        )
        self.model_reloads = Counter("actor_model_reloads", "Models loaded from latest.onnx.", registry=r)
        self.model_load_seconds = Histogram(
            "actor_model_load_seconds",
            "Loading and checking one latest.onnx.",
            buckets=FAST_BUCKETS,
            registry=r,
        )
        loaded = Gauge(
            "actor_model_loaded",
            "1 while a published model guides the search, 0 before the first one.",
            registry=r,
        )
        loaded.set_function(lambda: float(model_loaded()))
        rss = Gauge("actor_memory_rss_bytes", "Resident memory of this actor process.", registry=r)
        rss.set_function(lambda: resident_memory_mb() * 2**20)
        Info("actor", "The game this actor plays and its id.", registry=r).info(
            {"game": game, "actor_id": actor_id}
        )
        self._finished: deque[float] = deque()

    def game_finished(self, winner: int, plies: int, seconds: float) -> None:
        """`winner` as in GameState: 1 or 2 for a player, anything else a draw."""
        self.episodes.inc()
        {1: self.player1_wins, 2: self.player2_wins}.get(winner, self.draws).inc()
        self.episode_steps.observe(plies)
        self.episode_seconds.observe(seconds)
        now = time.monotonic()
        self._finished.append(now)
        while now - self._finished[0] > RATE_HORIZON_S:
            self._finished.popleft()
        span = now - self._finished[0]
        if span > 0:
            self.episodes_per_second.set((len(self._finished) - 1) / span)

    def searched(self, seconds: float, positions: int, sims: int) -> None:
        self.search_seconds.observe(seconds)
        self.searches.inc(positions)
        for _ in range(positions):
            self.simulations.observe(sims)

    def stored(self, seconds: float, rows: int) -> None:
        self.db_write_seconds.observe(seconds)
        self.transitions.inc(rows)

    def model_reloaded(self, seconds: float) -> None:
        self.model_reloads.inc()
        self.model_load_seconds.observe(seconds)

    def timed_inference(self, evaluate: Callable[..., T]) -> Callable[..., T]:
        def timed(*args, **kwargs) -> T:
            t0 = time.perf_counter()
            try:
                return evaluate(*args, **kwargs)
            finally:
                self.inference_seconds.observe(time.perf_counter() - t0)

        return timed
