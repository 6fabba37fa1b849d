"""A step's metrics are computed when read, not when made: reading them every step, at the
end only, or never must train exactly the same weights (BatchNorm statistics, optimiser
moments and Polyak targets included), and a late read must report the step's own values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.games import get_game
from trainer.model.networks import build_network
from trainer.objectives.cql import CQLObjective
from trainer.objectives.iql import IQLObjective
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.objectives.step_metrics import StepMetrics
from trainer.sources.offline_data import RawData, build_dataset
from trainer.sources.offline_source import ShuffledSource

C4 = get_game("connect4")


def random_connect4(plies: int, seed: int) -> RawData:
    rng = np.random.default_rng(seed)
    obs, actions, rewards, dones = [], [], [], []
    while len(obs) < plies:
        state = C4.initial_state()
        while not state.is_terminal:
            a = int(rng.choice(np.flatnonzero(C4.legal_mask(state))))
            after = C4.apply(state, a)
            obs.append(C4.encode(state))
            actions.append(a)
            rewards.append(C4.reward_for_mover(state, after))
            dones.append(after.is_terminal)
            state = after
    return RawData(
        obs=np.stack(obs), actions=np.asarray(actions), rewards=np.asarray(rewards), dones=np.asarray(dones)
    )


def make_objective(mode: str):
    """A small ResNet: BatchNorm makes a stray forward pass in train mode visible."""
    torch.manual_seed(0)

    def make():
        return build_network(C4.spec, "resnet", channels=8, blocks=1)

    if mode == "imitation":
        return PolicyValueObjective(make(), name=mode, lr=1e-3, optimizer="adam", grad_clip=1.0)
    common = {"lr": 1e-3, "weight_decay": 1e-4, "grad_clip": 1.0, "gamma": 1.0, "target_update_rate": 0.05}
    if mode == "iql":
        return IQLObjective(make(), make, expectile=0.7, beta=3.0, max_weight=100.0, **common)
    return CQLObjective(make(), make, alpha=1.0, policy_temperature=0.1, **common)


def flat(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in flat(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in flat(v)]
    return []


@pytest.fixture(scope="module")
def data():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the commands run (--threads 1); tiny convolutions crawl on busy cores
    yield build_dataset(random_connect4(300, seed=1), "random.c4", transitions=True, env_id="connect4")
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["imitation", "iql", "cql"])
def test_reading_metrics_less_often_trains_the_same_weights(mode, data):
    rows = torch.arange(len(data))[data.has_next]
    runs = {}
    for reads in ("every step", "last step only"):
        objective, source = make_objective(mode), ShuffledSource(data, rows, 16, seed=3)
        read = []
        for _ in range(8):
            metrics = objective.train_step(source.next_batch(), 1e-3)
            if reads == "every step":
                read.append(dict(metrics))
        runs[reads] = (objective.state_dict(), read, metrics)

    (eager, read_every, _), (lazy, _, last) = runs["every step"], runs["last step only"]
    a, b = flat(eager), flat(lazy)
    assert len(a) == len(b) and len(a) > 10
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # Read after the step, its optimiser update and the Polyak update: the step's own values.
    late = dict(last)
    assert late == read_every[-1]
    assert {"total_loss", "policy_loss", "value_loss", "grad_norm", "policy_entropy"} <= late.keys()
    assert all(isinstance(v, float) and np.isfinite(v) for v in late.values())


def test_step_metrics_compute_the_rest_once_at_the_first_read_of_it():
    calls = []

    def later():
        calls.append(1)
        return {"loss": 9.0, "mean": torch.tensor(0.25), "count": torch.tensor(3)}

    m = StepMetrics({"loss": 1.5, "grad_norm": 2.0}, later)
    assert m["loss"] == 1.5 and m.get("grad_norm") == 2.0 and not calls
    m["val_loss"] = 0.5  # what the validation hook adds
    assert not calls
    assert m["mean"] == 0.25 and len(calls) == 1
    assert dict(m) == {"loss": 1.5, "grad_norm": 2.0, "val_loss": 0.5, "mean": 0.25, "count": 3.0}
    assert m.get("missing", -1.0) == -1.0 and len(calls) == 1
    assert all(type(v) is float for v in m.values())
