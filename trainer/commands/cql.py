"""`python -m trainer cql --data games.jsonl|h5 --steps N [--init-from BC_CHECKPOINT]`: offline CQL.

Discrete CQL(H) for two-player zero-sum games: twin Q with a legal-move log-sum-exp
penalty, double-Q targets on -max_a' Q(s', a') (the opponent's best reply), Polyak
targets; the published policy and value are distilled from Q. See trainer/objectives/cql.py.
"""

from __future__ import annotations

from trainer.commands.offline_common import run_offline
from trainer.config.offline import CQLConfig
from trainer.objectives.cql import CQLObjective


def make_objective(cfg: CQLConfig, spec, net, make_net) -> CQLObjective:
    return CQLObjective(
        net,
        make_net,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
        gamma=cfg.gamma,
        alpha=cfg.alpha,
        target_update_rate=cfg.target_update_rate,
        policy_temperature=cfg.policy_temperature,
        value_weight=cfg.value_weight,
        player_count=spec.player_count,
        critics=cfg.critics,
    )


def main(argv: list[str] | None = None) -> int:
    return run_offline("cql", CQLConfig, argv, __doc__.split("\n\n")[0], make_objective)
