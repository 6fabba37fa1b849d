"""`python -m trainer bc --data trajectories.jsonl [--val-data val.jsonl]`: behaviour cloning.

JSONL games (one per line; observations as lists or dicts, actions as indices or
action_type + action_target with --action-offsets); cross-entropy with label smoothing over
legal moves, AdamW, gradient clipping, warmup + cosine (or plateau); checkpoints best.pt,
every --save-every epochs and at the end, with optimiser state and global step (--resume).
"""

from __future__ import annotations

from trainer.commands.imitation import make_objective
from trainer.commands.offline_common import run_offline
from trainer.config.offline import BCConfig


def main(argv: list[str] | None = None) -> int:
    return run_offline("bc", BCConfig, argv, __doc__.split("\n\n")[0], make_objective)
