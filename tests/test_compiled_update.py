"""The update's speed paths change no arithmetic: `Objective.compile()` trains the weights
the eager update does, leaves checkpoints loadable without compiling and falls back to eager
(one warning) when the compiler fails; the direct fused Adam step equals the optimiser's.
A compiled policy/value update is one graph of forward, backward and clipping: it keeps each
objective's own settings, refuses a non-finite step having changed nothing, and hands a
wrapped net's update back to autograd (DDP's gradient hooks)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import test_offline_modes
import torch
from test_offline_modes import MODES, StopAt, argv, objective_tensors
from test_step_metrics import flat, random_connect4

from trainer.commands.offline_common import build_offline
from trainer.config import load_config
from trainer.games import get_game
from trainer.model.networks import build_network
from trainer.objectives.base import NonFiniteStep, adam
from trainer.objectives.iql import IQLObjective
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.sources.offline_data import build_dataset
from trainer.sources.offline_source import ShuffledSource
from trainer.training.state import load_checkpoint_file

C4 = get_game("connect4")
datasets = test_offline_modes.datasets  # the fixture: teacher games as JSONL and HDF5
STEPS = 4


def make_objective(mode: str, **settings):
    torch.manual_seed(0)

    def make():
        return build_network(C4.spec, "mlp", hidden=32, layers=2)

    if mode == "bc":
        bc = {"weight_decay": 1e-4, "grad_clip": 1.0, "label_smoothing": 0.05} | settings
        return PolicyValueObjective(make(), name=mode, lr=1e-2, **bc)
    common = {"lr": 1e-2, "weight_decay": 1e-4, "grad_clip": 1.0, "gamma": 1.0, "target_update_rate": 0.05}
    iql = {"expectile": 0.7, "beta": 3.0, "max_weight": 100.0} | settings
    return IQLObjective(make(), make, **iql, **common)


def train(mode: str, compiled: bool, **settings) -> tuple[dict, list[float]]:
    data = build_dataset(random_connect4(400, seed=1), "connect4", transitions=mode == "iql")
    rows = torch.arange(len(data))
    if mode == "iql":
        rows = rows[data.has_next]
    source = ShuffledSource(data, rows, 32, seed=0)
    obj = make_objective(mode, **settings)
    if compiled:
        obj.compile()
    # A changing LR: it must not be baked into what was compiled.
    losses = [obj.train_step(source.next_batch(), 1e-2 / (1 + k))["total_loss"] for k in range(STEPS)]
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


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["iql", "bc"])
def test_compiled_run_resumes_like_an_uninterrupted_one(mode, datasets, tmp_path):
    command, config, fmt, _, interrupt_at, _ = MODES[mode]
    args = lambda out: [*argv(mode, datasets[fmt], out), "--compile"]  # noqa: E731
    assert command.main(args(tmp_path / "a")) == 0
    loop = build_offline(mode, load_config(config, args(tmp_path / "b")), command.make_objective)
    loop.hooks.append(StopAt(interrupt_at))
    loop.run()
    assert command.main([*args(tmp_path / "b"), "--resume"]) == 0
    a, b = (load_checkpoint_file(tmp_path / run / "checkpoints" / "latest.pt") for run in "ab")
    ta, tb = objective_tensors(a), objective_tensors(b)
    assert b.step == a.step > interrupt_at and ta.keys() == tb.keys() and ".net.policy_head.weight" in ta
    for k in ta:
        torch.testing.assert_close(ta[k].float(), tb[k].float(), rtol=1e-5, atol=1e-6)


SETTINGS = {
    "bc": (
        {"label_smoothing": 0.0, "grad_clip": 0.0},
        {"label_smoothing": 0.2, "grad_clip": 0.05, "value_weight": 3.0},
    ),
    "iql": ({"expectile": 0.6}, {"expectile": 0.9, "beta": 1.0}),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(SETTINGS))
def test_compiled_objectives_of_one_shape_keep_their_own_settings(mode):
    """Two objectives of the same net shapes, compiled in one process, each train like their
    eager twin: one's compiled update (its smoothing, clipping, loss weights, expectile)
    never serves the other."""
    first, second = SETTINGS[mode]
    compiled = [train(mode, True, **first), train(mode, True, **second)]
    for settings, got in zip((first, second), compiled):
        assert_same_training(train(mode, False, **settings), got)


@pytest.mark.slow
def test_a_nonfinite_compiled_step_changes_nothing():
    data = build_dataset(random_connect4(200, seed=2), "connect4", transitions=False)
    source = ShuffledSource(data, torch.arange(len(data)), 32, seed=0)
    obj = make_objective("bc")
    obj.compile()
    for _ in range(2):  # optimiser state exists, the update is compiled
        obj.train_step(source.next_batch(), 1e-2)
    before = [t.clone() for t in flat(obj.state_dict())]
    bad = source.next_batch()
    bad.obs[3, 0] = float("inf")
    with pytest.raises(NonFiniteStep):
        obj.train_step(bad, 1e-2)
    after = flat(obj.state_dict())
    assert obj.whole_graph.compiled is not None  # the refusal was the guard's, not a fallback
    assert len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))
    assert np.isfinite(obj.train_step(source.next_batch(), 1e-2)["total_loss"])


class Wrapper(torch.nn.Module):
    """What `wrap_for_training` gets from DDP, reduced to what matters here: the net called
    through another module, gradients seen by hooks as autograd accumulates them."""

    def __init__(self, net: torch.nn.Module, seen: list[int]):
        super().__init__()
        self.net = net
        for p in net.parameters():
            p.register_post_accumulate_grad_hook(lambda p: seen.append(1))

    def forward(self, obs):
        return self.net(obs)


@pytest.mark.slow
@pytest.mark.parametrize("wrap_first", [True, False])
def test_a_wrapped_net_trains_compiled_through_autograd(wrap_first):
    data = build_dataset(random_connect4(200, seed=2), "connect4", transitions=False)
    source = ShuffledSource(data, torch.arange(len(data)), 32, seed=0)
    seen: list[int] = []
    obj = make_objective("bc")
    if wrap_first:
        obj.wrap_for_training(lambda net: Wrapper(net, seen))
    obj.compile()
    if not wrap_first:
        obj.wrap_for_training(lambda net: Wrapper(net, seen))
    for _ in range(STEPS):
        obj.train_step(source.next_batch(), 1e-2)
    assert len(seen) == STEPS * len(obj.params)


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


@pytest.mark.parametrize("decoupled", [True, False])
def test_direct_fused_step_updates_like_the_optimiser_step(decoupled):
    """Same weights and state as torch's own step, through a first step, a parameter without
    a gradient, LR changes and a reload of the state mid-way."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3), torch.randn(4)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    ref = [torch.nn.Parameter(t.clone()) for t in start]
    opt = adam(ours, lr=1e-2, weight_decay=0.1, decoupled=decoupled)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref_opt = cls(ref, lr=1e-2, weight_decay=0.1, fused=True)
    for step in range(6):
        if step == 3:  # a resumed run: fresh optimiser, loaded state
            opt = adam(ours, lr=1e-2, weight_decay=0.1, decoupled=decoupled)
            opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # as read from a file
        for params, o in ((ours, opt), (ref, ref_opt)):
            for g in o.param_groups:
                g["lr"] = 1e-2 / (step + 1)
            grads = torch.Generator().manual_seed(step)
            for p in params[:2]:  # the last one never gets a gradient
                p.grad = torch.randn(p.shape, generator=grads)
            o.step()
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    assert flat(opt.state_dict()["state"]) and all(
        torch.equal(a, b)
        for a, b in zip(flat(opt.state_dict()["state"]), flat(ref_opt.state_dict()["state"]))
    )
