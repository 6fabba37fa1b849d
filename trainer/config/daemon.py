"""Settings of the self-play training daemon (`python -m trainer train`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from trainer.config.distributed import DistributedSettings
from trainer.config.game_defaults import GameDefaults, apply_game_defaults, describe_game_defaults
from trainer.config.network import MAX_BATCH, MAX_LR, MAX_SEED, MAX_THREADS, NetworkSettings
from trainer.logging_setup import LogFormat
from trainer.replay.backend import RedactedReplayLocation, is_postgres_url

# Per game, settings that replace the defaults below when the user leaves them unset (see
# trainer/config/game_defaults.py). Connect Four's value target mix won a whole-loop A/B
# against the outcome alone, and batch 128 won two against 256: at the same samples/s it
# makes twice the updates (benchmarks/loop_ab.py; the numbers are in the README). Its
# cosine spans 40000 steps, not 20000: at batch 128 the loop passes step 20000 after about 70
# minutes on 2 cores, and at the LR floor its strength stopped rising
# (benchmarks/time_to_strength.py to 120 minutes).
GAME_DEFAULTS: GameDefaults = {
    "connect4": dict(value_target_mix=0.5, batch_size=128, lr_decay_steps=40000),
}


class DaemonConfig(NetworkSettings, DistributedSettings):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- files ---------------------------------------------------------------------------
    db: RedactedReplayLocation = Field(
        "./data/replay.db",
        description="Replay the actors write: a SQLite file, or a postgresql://user:password@host:port/database URL.",
    )
    model_dir: Path = Field(
        Path("./data/models"),
        description="Folder of published ONNX models (latest.onnx, model_step_NNNNNN.onnx).",
    )
    checkpoint_dir: Path | None = Field(
        None, description="Folder of training checkpoints; default <model-dir>/../checkpoints."
    )
    stats: Path = Field(Path("./data/stats.json"), description="stats.json the dashboard polls.")
    env_id: str = Field(
        "tictactoe", min_length=1, description="Game to train on (rows of other games are ignored)."
    )

    # --- length and schedule -------------------------------------------------------------
    steps: int = Field(5000, ge=0, description="Global target step across restarts; 0 runs until stopped.")
    batch_size: int = Field(
        256,
        gt=0,
        le=MAX_BATCH,
        description="Samples per training step (per rank under torchrun)."
        + describe_game_defaults(GAME_DEFAULTS, "batch_size"),
    )
    lr: float = Field(2e-3, gt=0, le=MAX_LR, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decoupled weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Global-norm gradient clip; 0 disables it.")
    lr_schedule: bool = Field(
        True, description="Linear warmup then cosine decay; --no-lr-schedule keeps the LR constant."
    )
    lr_warmup_steps: int = Field(100, ge=0, description="Linear warmup length in global steps.")
    lr_min_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of --lr.")
    lr_decay_steps: int = Field(
        20000,
        gt=0,
        description="Cosine length when --steps is 0 (then the LR stays at its floor)."
        + describe_game_defaults(GAME_DEFAULTS, "lr_decay_steps"),
    )
    policy_weight: float = Field(1.0, ge=0, description="Weight of the policy cross-entropy.")
    value_weight: float = Field(1.0, ge=0, description="Weight of the value MSE.")

    # --- data ----------------------------------------------------------------------------
    min_rows: int = Field(256, ge=1, description="Rows of --env-id needed before training starts.")
    window: int = Field(
        0, ge=0, description="Fixed replay window in rows; 0 = KataGo-style growing window (see --window-*)."
    )
    window_min_rows: int = Field(
        5000, gt=0, description="m: below this many rows seen the window is every row."
    )
    window_alpha: float = Field(0.75, gt=0, le=1, description="alpha: window grows like N^alpha beyond m.")
    window_beta: float = Field(0.4, gt=0, description="beta: window growth per row at N = m.")
    window_cap: int = Field(
        250_000, gt=0, description="Upper bound on the window in rows (memory follows it)."
    )
    # 4, as mature self-play trainers use, so a data-starved run does not over-fit a stale
    # window. Tiny games tolerate more: `python -m trainer run` passes 16 for tic-tac-toe,
    # which reaches a perfect greedy policy sooner there (benchmarks/time_to_strength.py).
    max_reuse: float = Field(
        4.0, ge=0, description="Samples trained per new row inserted before waiting for data; 0 disables."
    )
    augment: bool = Field(True, description="Random board symmetry per sample (--no-augment to disable).")
    value_target_mix: float = Field(
        0.0,
        ge=0,
        le=1,
        description="a: train the value on (1-a)*z + a*q, z the game outcome, q the row's mcts_value (the search's root value); rows without a usable mcts_value keep z. 0 = the outcome only."
        + describe_game_defaults(GAME_DEFAULTS, "value_target_mix"),
    )
    average_positions: bool = Field(
        False,
        description="Sample each distinct position of the window once, with the mean policy and value target of its rows, instead of every row (repeated openings count once).",
    )
    poll_interval: float = Field(
        0.5, gt=0, description="Seconds between checks of the DB for new rows while training."
    )
    replay_keep_rows: int = Field(
        0,
        ge=0,
        description="Delete --env-id's replay rows beyond the newest N (never fewer than the window plus a margin), in small batches while training; PostgreSQL replays only; 0 = keep every row.",
    )

    # --- side effects ----------------------------------------------------------------------
    # 100, not 200: actors improve only when a model is published, and a publish of the small
    # default nets is cheap (benchmarks/publish_bench.py), so the first model comes out sooner.
    checkpoint_interval: int = Field(100, gt=0, description="Steps between checkpoint + ONNX publish.")
    max_checkpoints: int = Field(
        5, ge=1, description="model_step_*.onnx files (and checkpoints) kept; older ones are pruned."
    )
    stats_interval: int = Field(25, gt=0, description="Steps between stats.json rewrites.")
    log_interval: int = Field(100, gt=0, description="Steps between progress log lines.")
    history_size: int = Field(
        400, ge=10, description="Maximum stats.json history entries (older ones are thinned)."
    )
    # On by default: the dashboard's strength chart is how a user sees the agent improve, and
    # greedy games of the published model against random are cheap (raw policy, batched, on a
    # worker thread; benchmarks/actor_bench.py times them).
    eval_interval: int = Field(
        500, ge=0, description="Steps between evaluations of latest.onnx against random (0 = off)."
    )
    eval_games: int = Field(100, gt=0, description="Games per periodic evaluation.")
    gate: bool = Field(
        False,
        description="With each evaluation, play the model against best.onnx (SPRT over colour-swapped pairs) and replace best.onnx when it is stronger; latest.onnx is unaffected.",
    )
    gate_games: int = Field(
        400, ge=2, description="Most games of one gate match (it stops earlier when the SPRT decides)."
    )
    gate_sprt: str = Field(
        "0,50",
        description="ELO0,ELO1 of the gate's SPRT: promote when 'Elo >= ELO1' is accepted over 'Elo <= ELO0'.",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Serve Prometheus metrics on this port at /metrics; 0 = off."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the metrics endpoint binds (0.0.0.0 inside a container for a Prometheus there).",
    )
    tensorboard: Path | None = Field(
        None,
        description="Write TensorBoard scalars (losses, LR, throughput, wait fraction, evaluations) to this folder; needs the tensorboard package (pip install 'selfplay-trainer[tensorboard]').",
    )

    # --- waiting -------------------------------------------------------------------------
    wait_interval: float = Field(
        1.0, gt=0, description="First wait (s) while data is missing; doubles up to 30 s."
    )
    max_wait: float = Field(
        0.0, ge=0, description="Give up (exit 2) after waiting this long in seconds for data; 0 = forever."
    )

    # --- runtime -------------------------------------------------------------------------
    device: Literal["cpu", "cuda", "mps"] = Field("cpu", description="Torch device.")
    threads: int = Field(
        1,
        gt=0,
        le=MAX_THREADS,
        description="torch intra-op threads (1 is fastest beside an actor on 2 cores).",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed (unset = from the OS).")
    amp: Literal["off", "bf16"] = Field(
        "off",
        description="Mixed precision for the training forward pass: bf16 autocast (weights stay float32).",
    )
    fresh: bool = Field(
        False,
        description="Start from scratch; the checkpoint folder's previous run is moved to previous-<time>/ there.",
    )
    init_from: Path | None = Field(
        None, description="Initialise weights from a checkpoint (e.g. an offline BC/IQL/CQL run)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")
    log_format: LogFormat = "text"

    @field_validator("gate_sprt")
    @classmethod
    def _gate_sprt(cls, v: str) -> str:
        from trainer.evaluator.sprt import parse_elo_bounds

        parse_elo_bounds(v)
        return v

    @field_validator("replay_keep_rows")
    @classmethod
    def _keep_rows_needs_postgres(cls, v: int, info: ValidationInfo) -> int:
        db = info.data.get("db")
        if v and db is not None and not is_postgres_url(db):
            raise ValueError(
                "deletes rows, which the trainer does only on a postgresql:// replay (--db is a SQLite file; "
                "the trainer opens it read-only)"
            )
        return v

    @model_validator(mode="after")
    def _derived(self) -> DaemonConfig:
        apply_game_defaults(self, GAME_DEFAULTS)
        if self.checkpoint_dir is None:
            object.__setattr__(self, "checkpoint_dir", self.model_dir.parent / "checkpoints")
        return self
