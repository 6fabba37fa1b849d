"""What a source hands the loop: one batch of tensors, already on the training device."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    obs: torch.Tensor  # float32 [B, obs_size]
    legal_mask: torch.Tensor  # bool [B, num_actions]
    policy: torch.Tensor  # float32 [B, num_actions]: target distribution (one-hot of the action for BC)
    value: torch.Tensor  # float32 [B]: target outcome from the mover's view, in [-1, 1]
    # Transition fields, filled by offline sources for IQL/CQL; None elsewhere.
    action: torch.Tensor | None = None  # int64 [B]
    reward: torch.Tensor | None = None  # float32 [B]
    next_obs: torch.Tensor | None = None  # float32 [B, obs_size]
    next_legal_mask: torch.Tensor | None = None  # bool [B, num_actions]
    done: torch.Tensor | None = None  # float32 [B]: 1.0 where the episode ended

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            f.name: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return Batch(**moved)
