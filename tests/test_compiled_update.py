"""`Objective.compile()`: the compiled update trains the weights the eager one does, leaves
checkpoints loadable without compiling, and falls back to eager (one warning) when the
compiler fails."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_step_metrics import flat, random_connect4

from trainer.games import get_game
from trainer.model.networks import build_network
from trainer.objectives.iql import IQLObjective
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.sources.offline_data import build_dataset
from trainer.sources.offline_source import ShuffledSource

C4 = get_game("connect4")
STEPS = 4


def make_objective(mode: str):
    torch.manual_seed(0)

    def make():
        return build_network(C4.spec, "mlp", hidden=32, layers=2)

    if mode == "bc":
        return PolicyValueObjective(
            make(), name=mode, lr=1e-2, weight_decay=1e-4, grad_clip=1.0, label_smoothing=0.05
        )
    common = {"lr": 1e-2, "weight_decay": 1e-4, "grad_clip": 1.0, "gamma": 1.0, "target_update_rate": 0.05}
    return IQLObjective(make(), make, expectile=0.7, beta=3.0, max_weight=100.0, **common)


def train(mode: str, compiled: bool) -> tuple[dict, list[float]]:
    data = build_dataset(random_connect4(400, seed=1), "connect4", transitions=mode == "iql")
    rows = torch.arange(len(data))
    if mode == "iql":
        rows = rows[data.has_next]
    source = ShuffledSource(data, rows, 32, seed=0)
    obj = make_objective(mode)
    if compiled:
        obj.compile()
    losses = [obj.train_step(source.next_batch(), 1e-2)["total_loss"] for _ in range(STEPS)]
    return obj.state_dict(), losses


def assert_same_training(a: tuple[dict, list[float]], b: tuple[dict, list[float]]) -> None:
    np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-5)
    ta, tb = flat(a[0]), flat(b[0])
    assert len(ta) == len(tb)
    for x, y in zip(ta, tb):
        torch.testing.assert_close(x.float(), y.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bc", "iql"])
def test_compiled_update_trains_the_eager_weights(mode):
    eager, compiled = train(mode, False), train(mode, True)
    assert_same_training(eager, compiled)
    # Checkpoints hold the plain modules' keys: they load into an objective never compiled.
    assert eager[0]["net"].keys() == compiled[0]["net"].keys()
    make_objective(mode).load_state_dict(compiled[0])


def test_failed_compilation_warns_once_and_trains_eagerly(monkeypatch, caplog):
    import torch._dynamo
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/c++",))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        fallback = train("bc", True)
    torch._dynamo.reset()
    warnings = [r for r in caplog.records if r.name == "trainer" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "compile" in warnings[0].getMessage()
    assert_same_training(train("bc", False), fallback)
