"""Network settings shared by the daemon and every offline mode (one set of flags)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from torch import nn

    from trainer.games import GameSpec


# Upper limits of settings whose size is allocated or handed to a C call: beyond them a run
# fails late (out of memory, an overflowing thread count) instead of at the command line.
MAX_LR = 10.0
MAX_BATCH = 1 << 20
MAX_THREADS = 1024
MAX_SEED = 2**63 - 1  # torch and numpy take any non-negative int64


class NetworkSettings(BaseModel):
    net: Literal["auto", "mlp", "resnet"] = Field(
        "auto",
        description="Network type; auto = MLP for small boards (tictactoe) and games described only by their data, ResNet for board games like connect4.",
    )
    hidden: int = Field(128, gt=0, le=1 << 16, description="MLP hidden width.")
    layers: int = Field(3, gt=0, le=256, description="MLP hidden layers.")
    channels: int = Field(64, gt=0, le=4096, description="ResNet channels.")
    blocks: int = Field(4, gt=0, le=256, description="ResNet residual blocks.")

    def network_description(self, kind: str) -> dict:
        """The architecture a checkpoint must match (stored in TrainState.network)."""
        from trainer.model.networks import describe_network

        return describe_network(kind, self.hidden, self.layers, self.channels, self.blocks)

    def build_network(self, spec: GameSpec, kind: str) -> nn.Module:
        from trainer.model.networks import build_network

        return build_network(spec, kind, self.hidden, self.layers, self.channels, self.blocks)
