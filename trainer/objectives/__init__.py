"""Objectives: what one training step optimises (AlphaZero, BC/imitation, IQL, CQL).

Each objective owns its networks and optimisers and implements `Objective`. Its
`train_step` reads top to bottom: forward, losses, backward, clip, step, metrics.
"""

from trainer.objectives.base import Objective

__all__ = ["Objective"]
