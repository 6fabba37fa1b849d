"""Settings of the offline commands: imitation, bc, split, iql, cql.

Every training mode shares `OfflineConfig` (files, batch, optimiser, network, runtime); each
mode adds its own knobs. The field descriptions are the `--help` texts (see loader.py).
Output folders default to `./data/<mode>/...` so an offline run never overwrites the
daemon's `latest.onnx` unless asked to with `--model-dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer.config.distributed import DistributedSettings
from trainer.config.network import MAX_BATCH, MAX_LR, MAX_SEED, MAX_THREADS, NetworkSettings
from trainer.logging_setup import LogFormat
from trainer.search.players import check_baseline_spec

# Larger action spaces are refused rather than sized: a policy head (and a legal mask per
# row) this wide would not fit in memory anyway.
MAX_ACTIONS = 1 << 20

ACTION_OFFSETS_HELP = (
    "Map from JSONL `action_type` to an offset in the flat action space, as inline JSON "
    '(e.g. \'{"move": 0, "pass": 9}\') or a .json/.toml file of the same mapping; '
    "the action index is offset[action_type] + action_target."
)


class OfflineConfig(NetworkSettings, DistributedSettings):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    mode: ClassVar[str] = "offline"  # overridden per command; names the default output folders

    # --- files ---------------------------------------------------------------------------
    data: Path = Field(
        ..., description="Training data: HDF5 (.h5/.hdf5) or JSONL trajectories (.jsonl/.json)."
    )
    model_dir: Path | None = Field(
        None, description="Folder of published ONNX models; default ./data/<mode>/models."
    )
    checkpoint_dir: Path | None = Field(
        None,
        description="Folder of training checkpoints (latest.pt, best.pt, ckpt_step_*.pt); default <model-dir>/../checkpoints.",
    )
    stats: Path | None = Field(None, description="stats.json to write; default <model-dir>/../stats.json.")
    env_id: str | None = Field(
        None,
        description="Game of the data; default: the HDF5 `env_id` attribute / JSONL `env_id` field, else a known game whose shapes match, else a game described by the data alone.",
    )
    num_actions: int | None = Field(
        None,
        gt=0,
        le=MAX_ACTIONS,
        description="Size of the action space when the data does not say it (no legal masks, no known game); default max(action)+1.",
    )
    player_count: int | None = Field(
        None,
        ge=1,
        le=2,
        description="Players taking turns in the data: 2 = two-player zero-sum, alternating (outcomes and the IQL/CQL bootstrap flip sign every ply), 1 = a single agent. Default: the known game's, else the HDF5 `player_count` attribute, else 2.",
    )

    # --- optimisation --------------------------------------------------------------------
    batch_size: int = Field(
        256, gt=1, le=MAX_BATCH, description="Samples per update (per rank under torchrun)."
    )
    lr: float = Field(1e-3, gt=0, le=MAX_LR, description="Peak learning rate.")
    weight_decay: float = Field(
        1e-4, ge=0, description="Decoupled weight decay (AdamW); 0 for plain Adam behaviour."
    )
    grad_clip: float = Field(1.0, ge=0, description="Global-norm gradient clip; 0 disables it.")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear LR warmup length in global steps.")
    lr_min_ratio: float = Field(0.05, ge=0, le=1, description="Cosine floor as a fraction of --lr.")
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed of the train/validation split, the batch order and the initial weights.",
    )

    # --- data handling -------------------------------------------------------------------
    stream_threshold_mb: float = Field(
        1024.0,
        ge=0,
        description="HDF5 files larger than this (MB) stream in chunks instead of being loaded into memory; every chunk is checked once before training starts.",
    )
    chunk_rows: int = Field(65536, ge=16, description="Rows per chunk when streaming HDF5.")

    # --- side effects ----------------------------------------------------------------------
    max_checkpoints: int = Field(
        3, ge=1, description="Step checkpoints and model_step_*.onnx files kept (best.pt is kept apart)."
    )
    stats_interval: int = Field(25, gt=0, description="Steps between stats.json rewrites.")
    log_interval: int = Field(100, gt=0, description="Steps between progress log lines.")
    progress: bool = Field(
        True,
        description="Progress bar with ETA and the latest validation loss on stderr (a line every 10% when stderr is not a terminal).",
    )
    eval_opponent: str | None = Field(
        None,
        description="At the end, play the final model (greedy raw policy) against this opponent as `python -m trainer.evaluator` does: random, perfect, mcts:SIMS, optionally +epsilon:E; printed and written to stats.json as final_eval.",
    )
    eval_games: int = Field(
        100, gt=0, le=100_000, description="Games of the --eval-opponent match (colours alternate)."
    )

    # --- runtime -------------------------------------------------------------------------
    device: Literal["cpu", "cuda", "mps"] = Field("cpu", description="Torch device.")
    threads: int = Field(1, gt=0, le=MAX_THREADS, description="torch intra-op threads.")
    compile: bool = Field(
        False,
        description="torch.compile the training forward and backward passes (faster steps after a compilation of seconds to a minute; eager, with a warning, where compiling fails).",
    )
    init_from: Path | None = Field(
        None,
        description="Initialise the policy-value network from a checkpoint of any mode (daemon, imitation, bc, iql, cql).",
    )
    resume: bool = Field(
        False, description="Continue the run in --checkpoint-dir (step counter, optimiser state, data order)."
    )
    fresh: bool = Field(
        False,
        description="Start over even though --checkpoint-dir holds a checkpoint; its checkpoints are moved to previous-<time>/ there, only once the data, the network and --init-from have been accepted.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")
    log_format: LogFormat = "text"

    @field_validator("eval_opponent")
    @classmethod
    def _eval_opponent(cls, v: str | None) -> str | None:
        return None if v is None else check_baseline_spec(v)

    @model_validator(mode="after")
    def _derived(self) -> OfflineConfig:
        if self.model_dir is None:
            object.__setattr__(self, "model_dir", Path("./data") / self.mode / "models")
        if self.checkpoint_dir is None:
            object.__setattr__(self, "checkpoint_dir", self.model_dir.parent / "checkpoints")
        if self.stats is None:
            object.__setattr__(self, "stats", self.model_dir.parent / "stats.json")
        if self.resume and self.fresh:
            raise ValueError("--resume and --fresh exclude each other")
        return self


class SupervisedConfig(OfflineConfig):
    """Imitation and behaviour cloning: cross-entropy on the data's actions."""

    epochs: int = Field(10, gt=0, description="Passes over the training split (global, across --resume).")
    val_data: Path | None = Field(
        None, description="Validation file; default: a seeded split of --data by episode (--val-fraction)."
    )
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Fraction of episodes held out for validation when --val-data is not given; 0 = no validation.",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Mass spread uniformly over the legal moves in the policy target."
    )
    value_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the value MSE against game outcomes (only on samples whose outcome is known).",
    )
    optimizer: Literal["adam", "adamw"] = Field("adamw", description="Optimiser.")
    lr_scheduler: Literal["cosine", "plateau", "constant"] = Field(
        "cosine",
        description="cosine: warmup then cosine over all epochs; plateau: multiply the LR by --plateau-factor after --plateau-patience epochs without a better validation loss.",
    )
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="LR multiplier on a plateau.")
    plateau_patience: int = Field(1, ge=0, description="Epochs without improvement before the LR is reduced.")
    patience: int = Field(
        0,
        ge=0,
        description="Stop after this many epochs without a better validation loss (0 = never stop early).",
    )
    save_every: int = Field(
        1,
        ge=1,
        description="Epochs between step checkpoints and ONNX publishes (best.pt and the final ones are saved regardless).",
    )
    action_offsets: str | None = Field(None, description=ACTION_OFFSETS_HELP)

    @model_validator(mode="after")
    def _val(self) -> SupervisedConfig:
        if self.lr_scheduler == "plateau" and self.val_fraction == 0 and self.val_data is None:
            raise ValueError(
                "--lr-scheduler plateau needs validation data (--val-data or --val-fraction > 0)"
            )
        return self


class ImitationConfig(SupervisedConfig):
    mode: ClassVar[str] = "imitation"
    optimizer: Literal["adam", "adamw"] = Field("adam", description="Optimiser.")
    weight_decay: float = Field(
        0.0, ge=0, description="Weight decay (Adam: L2 in the gradient; AdamW: decoupled)."
    )
    lr_scheduler: Literal["cosine", "plateau", "constant"] = Field(
        "plateau", description=SupervisedConfig.model_fields["lr_scheduler"].description
    )
    patience: int = Field(3, ge=0, description=SupervisedConfig.model_fields["patience"].description)


class BCConfig(SupervisedConfig):
    mode: ClassVar[str] = "bc"
    label_smoothing: float = Field(
        0.05, ge=0, lt=1, description=SupervisedConfig.model_fields["label_smoothing"].description
    )


class OfflineRLConfig(OfflineConfig):
    """IQL and CQL: step-based, warmup + cosine (the shared LRSchedule)."""

    steps: int = Field(5000, gt=0, description="Global target step across --resume.")
    gamma: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Discount. Games end with +-1 for the winner, so 1.0 (undiscounted) is the natural choice.",
    )
    target_update_rate: float = Field(
        0.005, gt=0, le=1, description="Polyak rate of the target Q networks per step."
    )
    value_weight: float = Field(
        1.0, ge=0, description="Weight of the value-head loss in the exported network."
    )
    critics: int = Field(
        2,
        ge=1,
        le=2,
        description="Q networks: 2 (twin, min/mean of both) or 1 (about two thirds of the arithmetic per update).",
    )
    lr_warmup_steps: int = Field(100, ge=0, description="Linear LR warmup length in global steps.")
    checkpoint_interval: int = Field(
        500, gt=0, description="Steps between step checkpoints and ONNX publishes."
    )
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Fraction of episodes held out; their TD/policy losses are logged every --checkpoint-interval steps (0 = none).",
    )
    action_offsets: str | None = Field(None, description=ACTION_OFFSETS_HELP)


class IQLConfig(OfflineRLConfig):
    mode: ClassVar[str] = "iql"
    expectile: float = Field(
        0.7,
        gt=0,
        lt=1,
        description="tau of the expectile value loss (0.5 = mean, towards 1 = max over the data's actions).",
    )
    beta: float = Field(
        3.0,
        ge=0,
        description="Inverse temperature of advantage-weighted policy extraction: weight = exp(beta * (Q - V)).",
    )
    max_weight: float = Field(100.0, gt=0, description="Clip of the advantage weights.")


class CQLConfig(OfflineRLConfig):
    mode: ClassVar[str] = "cql"
    alpha: float = Field(
        1.0, ge=0, description="Weight of the conservative penalty logsumexp_legal Q(s,.) - Q(s,a)."
    )
    policy_temperature: float = Field(
        0.1, gt=0, description="The exported policy is distilled from softmax(Q / T) over legal moves."
    )


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Path = Field(..., description="JSONL trajectory file, one episode per line.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Fraction of episodes written to --out-val.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the split.")
    out_train: Path = Field(..., description="Training episodes (written atomically).")
    out_val: Path = Field(..., description="Validation episodes (written atomically).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")
    log_format: LogFormat = "text"
