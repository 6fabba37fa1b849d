"""`python -m trainer imitation --data games.h5`: supervised imitation of a teacher's moves.

HDF5 rows of (states, actions[, legal_masks, outcomes | rewards + dones]); a seeded 90/10
split by game; masked cross-entropy (+ value MSE on outcomes when the data has them); Adam
with the LR reduced on a validation plateau (or cosine); early stopping with --patience;
best.pt kept beside the step checkpoints. See trainer/sources/offline_data/hdf5.py for the format.
"""

from __future__ import annotations

from trainer.commands.offline_common import run_offline
from trainer.config.offline import ImitationConfig, SupervisedConfig
from trainer.objectives.policy_value import PolicyValueObjective


def make_objective(cfg: SupervisedConfig, spec, net, make_net) -> PolicyValueObjective:
    return PolicyValueObjective(
        net,
        name=cfg.mode,
        lr=cfg.lr,
        optimizer=cfg.optimizer,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        label_smoothing=cfg.label_smoothing,
        value_weight=cfg.value_weight,
    )


def main(argv: list[str] | None = None) -> int:
    return run_offline("imitation", ImitationConfig, argv, __doc__.split("\n\n")[0], make_objective)
