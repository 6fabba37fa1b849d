"""`python -m trainer iql --data games.jsonl|h5 --steps N [--init-from BC_CHECKPOINT]`: offline IQL.

Discrete IQL for two-player zero-sum games: expectile V, twin Q with Polyak targets
bootstrapped on -V(s') (the opponent moves next), advantage-weighted policy extraction.
The published value head is IQL's V. See trainer/objectives/iql.py for the maths.
"""

from __future__ import annotations

from trainer.commands.offline_common import run_offline
from trainer.config.offline import IQLConfig
from trainer.objectives.iql import IQLObjective


def make_objective(cfg: IQLConfig, spec, net, make_net) -> IQLObjective:
    return IQLObjective(
        net,
        make_net,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        gamma=cfg.gamma,
        expectile=cfg.expectile,
        beta=cfg.beta,
        max_weight=cfg.max_weight,
        target_update_rate=cfg.target_update_rate,
        value_weight=cfg.value_weight,
        player_count=spec.player_count,
        critics=cfg.critics,
    )


def main(argv: list[str] | None = None) -> int:
    return run_offline("iql", IQLConfig, argv, __doc__.split("\n\n")[0], make_objective)
