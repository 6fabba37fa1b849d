"""Policy-value networks built from a game's shapes.

Every network maps the contract's flat observation [B, obs_size] to
(policy_logits [B, A], value [B, 1] in [-1, 1] via tanh), which is exactly the ONNX
contract, so export needs no wrapper. Convolutional nets rebuild board planes from the
observation inside `forward`, so actors keep feeding the flat vector.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from trainer.games import GameSpec

NetKind = Literal["auto", "mlp", "resnet"]


class MLPNet(nn.Module):
    def __init__(self, spec: GameSpec, hidden: int = 128, layers: int = 3):
        super().__init__()
        dims = [spec.obs_size] + [hidden] * layers
        trunk: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            trunk += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.trunk = nn.Sequential(*trunk)
        self.policy_head = nn.Linear(hidden, spec.num_actions)
        self.value_head = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, 1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.policy_head(h), torch.tanh(self.value_head(h))

    def policy_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy head alone: a twin-Q critic reads only its Q(s, .), not the value."""
        return self.policy_head(self.trunk(obs))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(x + y)


class ResNet(nn.Module):
    """AlphaZero-style tower: stem conv, residual blocks, 1x1-conv policy and value heads.

    Input planes: first player's stones, second player's stones, and the side to move as
    two constant planes (colours are absolute in the contract, so the net must be told).
    """

    def __init__(self, spec: GameSpec, channels: int = 64, blocks: int = 4):
        super().__init__()
        self.h, self.w, self.cells = spec.board_height, spec.board_width, spec.cells
        self.side_offset = spec.legal_slice.stop
        self.stem = nn.Sequential(
            nn.Conv2d(4, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.tower = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.policy_conv = nn.Sequential(nn.Conv2d(channels, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU())
        self.policy_fc = nn.Linear(2 * self.cells, spec.num_actions)
        self.value_conv = nn.Sequential(nn.Conv2d(channels, 1, 1, bias=False), nn.BatchNorm2d(1), nn.ReLU())
        self.value_fc = nn.Sequential(nn.Linear(self.cells, 64), nn.ReLU(), nn.Linear(64, 1))

    def planes(self, obs: torch.Tensor) -> torch.Tensor:
        b = obs.shape[0]
        stones = obs[:, : 2 * self.cells].reshape(b, 2, self.h, self.w)
        side = obs[:, self.side_offset : self.side_offset + 2].reshape(b, 2, 1, 1)
        return torch.cat([stones, side.expand(b, 2, self.h, self.w)], dim=1)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        x = self.planes(obs)
        if self.training and x.device.type == "cpu":
            # CPU convolution kernels are faster in channels-last layout.
            x = x.contiguous(memory_format=torch.channels_last)
        return self.tower(self.stem(x))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(obs)
        p = self.policy_fc(self.policy_conv(x).flatten(1))
        v = torch.tanh(self.value_fc(self.value_conv(x).flatten(1)))
        return p, v

    def policy_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy head alone: a twin-Q critic reads only its Q(s, .), not the value."""
        return self.policy_fc(self.policy_conv(self.features(obs)).flatten(1))


def resolve_net_kind(kind: NetKind, spec: GameSpec) -> str:
    if kind != "auto":
        return kind
    # Tiny boards gain nothing from convolutions; board games with room for local
    # patterns do.
    return "mlp" if spec.cells < 16 else "resnet"


def build_network(
    spec: GameSpec,
    kind: NetKind = "auto",
    hidden: int = 128,
    layers: int = 3,
    channels: int = 64,
    blocks: int = 4,
) -> nn.Module:
    kind = resolve_net_kind(kind, spec)
    if kind == "mlp":
        return MLPNet(spec, hidden, layers)
    if kind == "resnet":
        net = ResNet(spec, channels, blocks)
        return net.to(memory_format=torch.channels_last)
    raise ValueError(f"unknown network kind {kind!r}")


def describe_network(kind: str, hidden: int, layers: int, channels: int, blocks: int) -> dict:
    """The architecture settings a checkpoint must match to be loaded."""
    if kind == "mlp":
        return {"net": "mlp", "hidden": hidden, "layers": layers}
    return {"net": kind, "channels": channels, "blocks": blocks}
