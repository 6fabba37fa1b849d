"""torchrun settings shared by the daemon and every offline mode (one set of flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DistributedSettings(BaseModel):
    dist_backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Process-group backend under torchrun; auto = NCCL with --device cuda, else gloo."
    )
    dist_timeout: float = Field(
        120.0,
        ge=5,
        le=3600,
        description="Seconds a rank waits for the others in a collective (rank 0's publishing, checkpoints and offline validation included) before exiting with an error (under torchrun).",
    )
