"""Learning rate as a pure function of the global step.

Computing the LR from the step (instead of stepping a scheduler object) is what makes a
resumed run use exactly the LR an uninterrupted run would: nothing to restore, nothing to
drift. It avoids the two restart bugs this field keeps hitting: warmup firing again after a
restart (schedule counted from the process start) and the cosine frozen at its floor after
a restart (schedule length recomputed from the remaining steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    peak: float
    warmup_steps: int = 0
    decay_steps: int = 0  # length of warmup + cosine in global steps; 0 = constant after warmup
    min_ratio: float = 0.0
    enabled: bool = True

    def __call__(self, step: int) -> float:
        """LR for the update that takes the model from `step` to `step + 1`."""
        if not self.enabled:
            return self.peak
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        floor = self.peak * self.min_ratio
        span = self.decay_steps - self.warmup_steps
        if self.decay_steps <= 0 or span <= 0:
            return self.peak
        progress = min(1.0, (step - self.warmup_steps) / span)
        return floor + (self.peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
