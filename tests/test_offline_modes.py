"""One harness over every offline mode (d3rlpy-style): train a few steps on a fixed teacher's
games, interrupt, resume, and check that the resumed run equals an uninterrupted one
(weights, optimiser state, step), that the loss fell, that stats.json carries the mode's
metrics, and that the published ONNX computes what PyTorch does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_offline_teacher import play_games, write_hdf5, write_jsonl

from trainer.commands import bc, cql, imitation, iql
from trainer.commands.offline_common import build_offline
from trainer.config import load_config
from trainer.config.offline import BCConfig, CQLConfig, ImitationConfig, IQLConfig
from trainer.games import GameSpec
from trainer.hooks.base import Hook
from trainer.model.contract import sample_observations
from trainer.model.networks import build_network
from trainer.sources.offline_data import load_dataset
from trainer.training.state import load_checkpoint_file

NET = ["--hidden", "48", "--layers", "2", "--threads", "1", "--no-progress", "--log-level", "WARNING"]

# mode -> (command module, config, data format, length flags, steps to interrupt at, mode metrics)
MODES = {
    "imitation": (
        imitation,
        ImitationConfig,
        "h5",
        ["--epochs", "4", "--lr", "3e-3"],
        50,
        ["val_policy_accuracy", "val_total_loss"],
    ),
    "bc": (
        bc,
        BCConfig,
        "jsonl",
        ["--epochs", "4", "--lr", "3e-3", "--save-every", "2"],
        50,
        ["val_policy_accuracy", "val_total_loss"],
    ),
    "iql": (
        iql,
        IQLConfig,
        "jsonl",
        ["--steps", "80", "--lr", "3e-3", "--lr-warmup-steps", "5", "--checkpoint-interval", "40"],
        30,
        ["q_mean", "v_mean", "advantage_mean", "advantage_std"],
    ),
    "cql": (
        cql,
        CQLConfig,
        "h5",
        ["--steps", "80", "--lr", "3e-3", "--lr-warmup-steps", "5", "--checkpoint-interval", "40"],
        30,
        ["q_mean", "cql_penalty", "td_loss", "q_target_mean"],
    ),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("offline_data")
    games = play_games(160, seed=3)
    return {
        "jsonl": write_jsonl(root / "teacher.jsonl", games),
        "h5": write_hdf5(root / "teacher.h5", games, d4rl=True),
    }


class StopAt(Hook):
    """Interrupts the run like Ctrl-C would, after `step`."""

    def __init__(self, step: int):
        self.at = step

    def after_step(self, loop, metrics) -> None:
        if loop.step == self.at:
            loop.request_stop("test interrupt")


def argv(mode: str, data: Path, out: Path) -> list[str]:
    _, _, _, length, _, _ = MODES[mode]
    return [
        "--data",
        str(data),
        "--model-dir",
        str(out / "models"),
        "--batch-size",
        "64",
        "--seed",
        "7",
        "--stats-interval",
        "5",
        *length,
        *NET,
    ]


def objective_tensors(state) -> dict[str, torch.Tensor]:
    flat = {}

    def walk(prefix, x):
        if isinstance(x, torch.Tensor):
            flat[prefix] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(f"{prefix}.{i}", v)

    walk("", state.objective)
    return flat


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_trains_resumes_and_exports(mode, datasets, tmp_path):
    command, config, fmt, _, interrupt_at, mode_metrics = MODES[mode]
    data = datasets[fmt]

    # Uninterrupted run.
    assert command.main(argv(mode, data, tmp_path / "a")) == 0
    a = load_checkpoint_file(tmp_path / "a" / "checkpoints" / "latest.pt")

    # The same run interrupted mid-way, then resumed.
    cfg = load_config(config, argv(mode, data, tmp_path / "b"))
    loop = build_offline(mode, cfg, command.make_objective)
    loop.hooks.append(StopAt(interrupt_at))
    loop.run()
    assert loop.state.step == interrupt_at
    assert command.main([*argv(mode, data, tmp_path / "b"), "--resume"]) == 0
    b = load_checkpoint_file(tmp_path / "b" / "checkpoints" / "latest.pt")

    assert a.mode == b.mode == mode and b.step == a.step > interrupt_at
    assert b.samples_trained == a.samples_trained
    ta, tb = objective_tensors(a), objective_tensors(b)
    assert ta.keys() == tb.keys() and ".net.policy_head.weight" in ta
    for k in ta:
        assert torch.allclose(ta[k].float(), tb[k].float(), atol=1e-6), k
    opt = b.objective.get("optimizer") or b.objective["opt_net"]
    assert all(int(s["step"]) == b.step for s in opt["state"].values())  # optimiser state carried over

    # stats.json: the mode, its metrics, and a falling loss.
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert stats["mode"] == mode and stats["step"] == b.step and isinstance(stats["samples_seen"], int)
    for key in mode_metrics:
        assert key in stats["metrics"], key
    hist = stats["history"]
    assert hist[0]["step"] < interrupt_at  # the chart survived the restart
    first = np.mean([h["policy_loss"] for h in hist[:2]])
    last = np.mean([h["policy_loss"] for h in hist[-3:]])
    assert last < first - 0.1, (first, last)
    if mode in ("imitation", "bc"):
        assert stats["metrics"]["val_policy_accuracy"] > 0.5
        assert (tmp_path / "b" / "checkpoints" / "best.pt").exists()

    # The published model: contract shapes, and onnxruntime == PyTorch within 1e-4.
    spec = GameSpec(**b.spec)
    net = build_network(spec, b.network["net"], hidden=48, layers=2)
    net.load_state_dict(b.objective["net"])
    net.eval()
    obs = sample_observations(spec, 16, seed=5)
    session = ort.InferenceSession(
        str(tmp_path / "b" / "models" / "latest.onnx"), providers=["CPUExecutionProvider"]
    )
    logits, value = session.run(None, {"observation": obs})
    with torch.no_grad():
        want_logits, want_value = net(torch.from_numpy(obs))
    assert logits.shape == (16, spec.num_actions) and value.shape == (16, 1)
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(value, want_value.numpy(), atol=1e-4)
    assert np.all(np.abs(value) <= 1.0)


def test_imitation_learns_the_outcomes(datasets, tmp_path):
    """The value head trains on the stored outcomes: its error on the data falls well below
    the untrained network's."""
    out = tmp_path / "v"
    args = [
        "--data",
        str(datasets["h5"]),
        "--model-dir",
        str(out / "models"),
        "--batch-size",
        "64",
        "--seed",
        "7",
        "--epochs",
        "12",
        "--lr",
        "3e-3",
        "--val-fraction",
        "0",
        "--lr-scheduler",
        "constant",
        *NET,
    ]
    assert imitation.main(args) == 0
    state = load_checkpoint_file(out / "checkpoints" / "latest.pt")
    data = load_dataset(datasets["h5"], transitions=False)
    assert data.has_values

    def value_error(weights) -> float:
        torch.manual_seed(0)
        net = build_network(GameSpec(**state.spec), state.network["net"], hidden=48, layers=2)
        if weights is not None:
            net.load_state_dict(weights)
        net.eval()
        with torch.no_grad():
            return float(((net(data.obs)[1].squeeze(-1) - data.value) ** 2).mean())

    untrained, trained = value_error(None), value_error(state.objective["net"])
    assert trained < 0.6 * untrained, (untrained, trained)


@pytest.mark.parametrize("mode", ["bc", "cql"])
def test_logging_less_often_trains_the_same_weights(mode, datasets, tmp_path):
    """stats.json and the log every step or once at the end: the same checkpoint, bit for bit."""
    _, _, fmt, _, _, _ = MODES[mode]
    states = []
    for name, every in (("often", "1"), ("rarely", "1000")):
        out = tmp_path / name
        args = [*argv(mode, datasets[fmt], out), "--stats-interval", every, "--log-interval", every]
        assert MODES[mode][0].main(args) == 0
        states.append(objective_tensors(load_checkpoint_file(out / "checkpoints" / "latest.pt")))
    often, rarely = states
    assert often.keys() == rarely.keys() and ".net.policy_head.weight" in often
    for k in often:
        assert torch.equal(often[k], rarely[k]), k
