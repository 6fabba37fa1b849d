"""The daemon learns: on replay data from a fixed strong player, the policy's accuracy and
the value loss improve clearly within a short run."""

from __future__ import annotations

import numpy as np
import torch
from replay_data import write_games_by_player

from trainer.commands.train import build_daemon
from trainer.config import DaemonConfig
from trainer.games import get_game
from trainer.search.players import PerfectPlayer
from trainer.training.batch import Batch
from trainer.training.run import run_to_end


def held_out_batch(game, player, n_games: int, seed: int) -> Batch:
    """Positions from fresh games, labelled with the strong player's move and the outcome."""
    rng = np.random.default_rng(seed)
    obs, masks, policies, values = [], [], [], []
    for _ in range(n_games):
        s, movers, start = game.initial_state(), [], len(obs)
        while not s.is_terminal:
            a, policy = choose(game, s, rng, player)
            obs.append(game.encode(s))
            masks.append(game.legal_mask(s))
            policies.append(policy)
            movers.append(s.to_move)
            s = game.apply(s, a)
        for mover in movers:
            values.append(0.0 if s.winner == 3 else (1.0 if s.winner == mover else -1.0))
        assert len(values) == len(obs) and start <= len(obs)
    return Batch(
        torch.tensor(np.array(obs)),
        torch.tensor(np.array(masks)),
        torch.tensor(np.array(policies), dtype=torch.float32),
        torch.tensor(values, dtype=torch.float32),
    )


def choose(game, state, rng, player):
    """The strong player's move; random openings (first 3 plies, half the time) vary the
    positions while keeping outcomes a function of the position, so value is learnable."""
    legal = game.legal_actions(state)
    values = player.action_values(state)
    best = [a for a, v in values.items() if v == max(values.values())]
    policy = np.zeros(game.spec.num_actions, np.float32)
    policy[best] = 1.0 / len(best)
    a = int(rng.choice(legal)) if state.ply < 3 and rng.random() < 0.5 else int(rng.choice(best))
    return a, policy


def test_policy_accuracy_and_value_loss_improve(tmp_path):
    game = get_game("tictactoe")
    player = PerfectPlayer(game, np.random.default_rng(0))
    write_games_by_player(
        tmp_path / "replay.db", "tictactoe", 400, lambda g, s, rng: choose(g, s, rng, player), seed=1
    )
    cfg = DaemonConfig(
        db=tmp_path / "replay.db",
        model_dir=tmp_path / "models",
        stats=tmp_path / "stats.json",
        steps=600,
        batch_size=128,
        max_reuse=0,
        checkpoint_interval=300,
        seed=0,
        lr_warmup_steps=50,
        log_level="WARNING",
    )
    loop = build_daemon(cfg)
    held_out = held_out_batch(game, player, 150, seed=99)
    before = loop.objective.evaluate(held_out)
    run_to_end(loop)
    after = loop.objective.evaluate(held_out)
    print("before", before, "after", after)
    assert after["policy_accuracy"] >= 0.9 and after["policy_accuracy"] > before["policy_accuracy"] + 0.2
    assert after["value_loss"] < 0.5 * before["value_loss"]
