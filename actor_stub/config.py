"""Settings of the Python self-play actor (`python -m actor_stub`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainer.config.game_defaults import GameDefaults, apply_game_defaults, describe_game_defaults
from trainer.games import KNOWN_ENV_IDS
from trainer.logging_setup import LogFormat
from trainer.replay.backend import ReplayLocation

# Per game, settings that replace the defaults below when the user leaves them unset (no
# flag, ACTOR_* variable or TOML key). Connect Four: parallel_games chosen with
# benchmarks/actor_bench.py (plies/s side by side) and benchmarks/actor_strength.py (the same
# model under the old and the new settings); temperature_plies by whole-loop A/Bs
# (benchmarks/loop_ab.py): with 4 sampled plies of 42 the games repeat few openings, and the
# net trained on them lost to one trained on more varied games (numbers in the README).
GAME_DEFAULTS: GameDefaults = {
    "connect4": dict(parallel_games=32, temperature_plies=10),
}


class ActorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env_id: str = Field(
        "tictactoe",
        min_length=1,
        description="Game to play (one of the games in trainer/games: " + ", ".join(KNOWN_ENV_IDS) + ").",
    )
    db: ReplayLocation = Field(
        "./data/replay.db",
        description="Replay to append whole games to: a SQLite file, or a postgresql:// URL.",
    )
    model_dir: Path = Field(
        Path("./data/models"),
        description="Folder watched for latest.onnx; without it the actor uses rollout MCTS.",
    )
    sims: int = Field(
        50,
        ge=0,
        description="MCTS simulations per move; 0 = no search (uniform random without a model, the raw policy with one).",
    )
    episodes: int = Field(0, ge=0, description="Games to play in total across workers; 0 = until stopped.")
    workers: int = Field(
        1, ge=1, le=1024, description="Actor processes (each plays --parallel-games games at once)."
    )
    seed: int | None = Field(None, description="Random seed (worker i uses seed + i); unset = from the OS.")
    c_puct: float = Field(1.5, gt=0, description="PUCT exploration constant.")
    dirichlet_alpha: float = Field(
        0.3, gt=0, description="Dirichlet noise concentration at the root (about 10 / typical legal moves)."
    )
    dirichlet_weight: float = Field(
        0.25, ge=0, le=1, description="Share of Dirichlet noise mixed into the root priors; 0 disables it."
    )
    search: Literal["puct", "gumbel"] = Field(
        "puct",
        description="Search: PUCT with Dirichlet noise and visit-count targets, or Gumbel root search (sequential halving, completed-Q targets; for 8-32 sims; ignores --temperature-plies and --reuse-tree).",
    )
    reuse_tree: bool = Field(
        False,
        description="Keep the subtree of the move played as the next ply's search tree; its visits count toward --sims.",
    )
    eval_cache: int = Field(
        100_000,
        ge=0,
        description="Positions whose model evaluation is remembered per model (transpositions cost no network call); 0 disables it.",
    )
    int8: bool = Field(
        False,
        description="Search with an int8 copy of each model (onnxruntime static quantization, made at load), kept only where it is faster than float32 on this CPU (those with VNNI); a little less exact.",
    )
    temperature_plies: int = Field(
        4,
        ge=0,
        description="Plies at the start of a game sampled proportionally to visits; later moves take the most visited."
        + describe_game_defaults(GAME_DEFAULTS, "temperature_plies"),
    )
    parallel_games: int = Field(
        8,
        ge=1,
        le=65536,
        description="Games played at once per process; their leaves go to the model in one batch."
        + describe_game_defaults(GAME_DEFAULTS, "parallel_games"),
    )
    threads: int = Field(1, ge=1, le=1024, description="onnxruntime intra-op threads per process.")
    poll_interval: float = Field(
        2.0, gt=0, description="Seconds between mtime checks of latest.onnx (file events cover the rest)."
    )
    log_interval: float = Field(10.0, gt=0, description="Seconds between throughput log lines.")
    actor_id: str | None = Field(None, description="Prefix of episode ids; default py-<host>-<pid>.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")
    log_format: LogFormat = "text"
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics on this port at /metrics (worker i uses port + i); 0 = off.",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the metrics endpoint binds (0.0.0.0 inside a container for a Prometheus there).",
    )

    @model_validator(mode="after")
    def _game_defaults(self) -> ActorConfig:
        apply_game_defaults(self, GAME_DEFAULTS)
        return self
