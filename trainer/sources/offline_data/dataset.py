"""The two in-memory forms of offline data: `RawData` as a reader returns it, and the
validated `OfflineDataset` of aligned tensors that training indexes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from trainer.games import GameSpec
from trainer.training.batch import Batch


class OfflineDataError(ValueError):
    """Bad input data; the message names the file and the key, row or line."""


@dataclass
class RawData:
    """Numpy arrays as read, before validation; None = absent from the file."""

    obs: np.ndarray
    actions: np.ndarray
    legal: np.ndarray | None = None
    outcomes: np.ndarray | None = None
    rewards: np.ndarray | None = None
    dones: np.ndarray | None = None
    timeouts: np.ndarray | None = None
    next_obs: np.ndarray | None = None
    next_legal: np.ndarray | None = None
    episode_ids: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    row_names: list[str] | None = None  # "line 7 step 3" per row (JSONL), for messages


@dataclass
class OfflineDataset:
    spec: GameSpec
    obs: torch.Tensor  # float32 [N, obs_size]
    action: torch.Tensor  # int64 [N]
    legal_mask: torch.Tensor  # bool [N, A]
    value: torch.Tensor  # float32 [N]; NaN where the outcome is unknown
    episode: torch.Tensor  # int64 [N]; 0..E-1, rows of a game are consecutive
    reward: torch.Tensor | None = None  # float32 [N]
    done: torch.Tensor | None = None  # float32 [N]
    next_obs: torch.Tensor | None = None  # float32 [N, obs_size]
    next_legal_mask: torch.Tensor | None = None  # bool [N, A]
    has_next: torch.Tensor | None = None  # bool [N]: usable as a TD transition
    path: str = ""

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode[-1]) + 1 if len(self) else 0

    @property
    def has_transitions(self) -> bool:
        return self.next_obs is not None

    @property
    def has_values(self) -> bool:
        return bool(torch.isfinite(self.value).any())

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }

    def to(self, device: torch.device | str) -> OfflineDataset:
        return replace(self, **{name: t.to(device) for name, t in self._tensors().items()})

    def head(self, rows: int) -> OfflineDataset:
        """The first `rows` rows (a streamed chunk drops its look-ahead row this way)."""
        return replace(self, **{name: t[:rows] for name, t in self._tensors().items()})

    def batch(self, idx: torch.Tensor) -> Batch:
        """Gather rows `idx` (an index tensor on the data's device): no Python per sample.
        `index_select`, not `t[idx]`: the general indexing path is several times slower on
        CPU for the same copy."""

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, idx)

        action, legal = rows(self.action), rows(self.legal_mask)
        policy = torch.zeros(legal.shape, dtype=torch.float32, device=legal.device)
        policy.scatter_(1, action.unsqueeze(1), 1.0)
        b = Batch(obs=rows(self.obs), legal_mask=legal, policy=policy, value=rows(self.value), action=action)
        if self.next_obs is not None:
            b.reward, b.done = rows(self.reward), rows(self.done)
            b.next_obs, b.next_legal_mask = rows(self.next_obs), rows(self.next_legal_mask)
        return b
