"""Network settings shared by the daemon and every offline mode (one set of flags)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from torch import nn

    from trainer.games import GameSpec


class NetworkSettings(BaseModel):
    net: Literal["auto", "mlp", "resnet"] = Field("auto", description="Network type; auto = MLP for small boards (tictactoe) and games described only by their data, ResNet for board games like connect4.")
    hidden: int = Field(128, gt=0, description="MLP hidden width.")
    layers: int = Field(3, gt=0, description="MLP hidden layers.")
    channels: int = Field(64, gt=0, description="ResNet channels.")
    blocks: int = Field(4, gt=0, description="ResNet residual blocks.")

    def network_description(self, kind: str) -> dict:
        """The architecture a checkpoint must match (stored in TrainState.network)."""
        from trainer.model.networks import describe_network

        return describe_network(kind, self.hidden, self.layers, self.channels, self.blocks)

    def build_network(self, spec: "GameSpec", kind: str) -> "nn.Module":
        from trainer.model.networks import build_network

        return build_network(spec, kind, self.hidden, self.layers, self.channels, self.blocks)
