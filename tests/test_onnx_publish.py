"""ONNX export, verification and publishing, through real onnxruntime and real processes
(docs/contract.md section 3)."""

from __future__ import annotations

import copy
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from trainer.games import get_game
from trainer.model.contract import LATEST_MODEL_NAME, read_model_metadata, sample_observations
from trainer.model.onnx_export import PublishError, export_onnx, verify_onnx
from trainer.model.publish import publish_model, step_file_name

# pytest replaces the warning filters onnx_export installs at import with its own, per test.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*treespec.*LeafSpec:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

TTT = get_game("tictactoe").spec
C4 = get_game("connect4").spec
REPO = Path(__file__).resolve().parents[1]
META = {"samples_trained": "1280", "rows_seen": "640"}


class TinyMLP(nn.Module):
    """Same signature as the real nets: obs [B, obs_size] -> (logits [B, A], value [B, 1])."""

    def __init__(self, obs_size: int, num_actions: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_size, hidden), nn.ReLU())
        self.policy = nn.Linear(hidden, num_actions)
        self.value = nn.Linear(hidden, 1)

    def forward(self, obs):
        h = self.body(obs)
        return self.policy(h), torch.tanh(self.value(h))


class TinyConv(nn.Module):
    """connect4 planes built inside the module, BatchNorm (so train/eval mode matters)."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU())
        self.policy = nn.Linear(ch * 42, 7)
        self.value = nn.Linear(ch * 42, 1)

    def forward(self, obs):
        b = obs.shape[0]
        stones = obs[:, :84].reshape(b, 2, 6, 7)
        side = obs[:, 91:92].reshape(b, 1, 1, 1).expand(b, 1, 6, 7)
        h = self.stem(torch.cat([stones, side], 1)).flatten(1)
        return self.policy(h), torch.tanh(self.value(h))


class WrongPolicyShape(TinyMLP):
    def forward(self, obs):
        logits, value = super().forward(obs)
        return logits[:, :-1], value


class NaNValue(TinyMLP):
    def forward(self, obs):
        logits, value = super().forward(obs)
        return logits, value * float("nan")


class BakedBatch(TinyMLP):
    """Bakes the trace batch into a reshape: fine at batch 2, wrong at any other."""

    def forward(self, obs):
        logits, value = super().forward(obs)
        return logits, value.reshape(2, 1)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _seeded(cls, *args):
    torch.manual_seed(0)
    return cls(*args)


@pytest.mark.parametrize(
    "make, spec, exporter",
    [
        (lambda: TinyMLP(29, 9), TTT, "torchscript"),
        (lambda: TinyConv(), C4, "torchscript"),
        (lambda: TinyMLP(29, 9), TTT, "dynamo"),  # the fallback path stays working
    ],
    ids=["mlp-torchscript", "conv-torchscript", "mlp-dynamo"],
)
def test_export_runs_in_onnxruntime_with_dynamic_batch(tmp_path, make, spec, exporter):
    torch.manual_seed(0)
    net = make()
    path = tmp_path / "m.onnx"
    export_onnx(net, spec, path, {"step": "7", **META, "note": "x"}, exporter=exporter)
    verify_onnx(path, net, spec)

    net.eval()
    session = _session(path)
    for batch in (1, 5, 64):
        obs = sample_observations(spec, batch, seed=batch)
        logits, value = session.run(None, {"observation": obs})
        with torch.no_grad():
            want_logits, want_value = net(torch.from_numpy(obs))
        assert logits.shape == (batch, spec.num_actions) and value.shape == (batch, 1)
        np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(value, want_value.numpy(), atol=1e-4, rtol=0)

    meta = read_model_metadata(path)
    assert meta["env_id"] == spec.env_id and meta["step"] == "7" and meta["note"] == "x"
    assert meta["samples_trained"] == "1280" and meta["rows_seen"] == "640"
    assert meta["trainer_version"] and meta["created_at"].startswith("20")
    assert not list(tmp_path.glob("*.data")) and not list(tmp_path.glob("*.onnx_data"))


def test_export_leaves_the_training_module_untouched(tmp_path):
    net = _seeded(TinyConv).to(memory_format=torch.channels_last).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    publish_model(net, C4, tmp_path, 1, META, max_keep=3)
    assert net.training and net.stem[0].weight.requires_grad
    assert net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats included


def test_publish_writes_step_and_latest_0644_and_cleans_stale_temps(tmp_path):
    stale = tmp_path / ".latest.onnx.abc123.tmp"
    stale.write_bytes(b"half a model")
    res = publish_model(_seeded(TinyMLP, 29, 9), TTT, tmp_path, 12, META, max_keep=3)
    assert res.path == tmp_path / step_file_name(12) == tmp_path / "model_step_000012.onnx"
    assert res.latest == tmp_path / LATEST_MODEL_NAME and not res.latest.is_symlink()
    assert res.latest.read_bytes() == res.path.read_bytes()
    assert res.seconds >= res.export_seconds + res.verify_seconds > 0
    for p in (res.path, res.latest):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert read_model_metadata(res.latest)["step"] == "12"
    assert not stale.exists() and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("bad", [WrongPolicyShape, NaNValue, BakedBatch])
def test_broken_model_is_not_published(tmp_path, bad):
    good = publish_model(_seeded(TinyMLP, 29, 9), TTT, tmp_path, 1, META, max_keep=3)
    good_bytes = good.latest.read_bytes()
    with pytest.raises(PublishError):
        publish_model(_seeded(bad, 29, 9), TTT, tmp_path, 2, META, max_keep=3)
    assert good.latest.read_bytes() == good_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST_MODEL_NAME, step_file_name(1)]


def test_missing_provenance_is_a_caller_error(tmp_path):
    with pytest.raises(ValueError, match="rows_seen"):
        publish_model(TinyMLP(29, 9), TTT, tmp_path, 1, {"samples_trained": "1"}, max_keep=3)
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_pruning_keeps_newest_steps_across_runs(tmp_path):
    # Files from earlier runs, including a step above 999999 (7 digits) and non-step files.
    for step in (3, 50, 1_200_000):
        (tmp_path / step_file_name(step)).write_bytes(b"old run")
    (tmp_path / "model_step_abc.onnx").write_bytes(b"not ours")
    (tmp_path / "notes.txt").write_text("keep me")
    net = _seeded(TinyMLP, 29, 9)
    for step in (100, 200, 300):
        res = publish_model(net, TTT, tmp_path, step, META, max_keep=2)
        # the just-published file survives even below an earlier run's higher step
        assert res.path.exists()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        [
            LATEST_MODEL_NAME,
            "model_step_abc.onnx",
            "notes.txt",
            step_file_name(300),
            step_file_name(1_200_000),
        ]
    )
    assert read_model_metadata(tmp_path / LATEST_MODEL_NAME)["step"] == "300"


_READER = textwrap.dedent(
    """
    import os, sys, numpy as np, onnxruntime as ort
    path, stop = sys.argv[1], sys.argv[2]
    opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
    obs = np.zeros((3, 29), np.float32)
    loads, first = 0, True
    while first or not os.path.exists(stop):
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        logits, value = s.run(None, {"observation": obs})
        assert logits.shape == (3, 9) and value.shape == (3, 1), (logits.shape, value.shape)
        assert np.isfinite(logits).all() and np.isfinite(value).all()
        loads += 1
        if first:
            print("ready", flush=True); first = False
    print(loads, flush=True)
    """
)


def test_reader_process_never_sees_a_broken_latest(tmp_path):
    models = tmp_path / "models"
    net = _seeded(TinyMLP, 29, 9, 512)  # ~90 KB: reads take long enough to overlap renames
    publish_model(net, TTT, models, 0, META, max_keep=3)
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(models / LATEST_MODEL_NAME), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read()
        for step in range(1, 31):
            with torch.no_grad():
                net.policy.weight.add_(0.01)  # a new model each time
            publish_model(net, TTT, models, step, META, max_keep=3)
        stop.touch()
        out, err = reader.communicate(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, err
    print(f"reader loaded latest.onnx {int(out)} times during 30 publishes")
    assert int(out) > 30  # it really loaded while we were publishing
    assert len(list(models.glob("model_step_*.onnx"))) == 3


_PUBLISHER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from tests.test_onnx_publish import TinyMLP, TTT, META
    from trainer.model.publish import publish_model
    torch.manual_seed(0)
    net = TinyMLP(29, 9, hidden=64)
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            net.policy.weight.add_(0.01)
        publish_model(net, TTT, sys.argv[1], step, META, max_keep=2)
        if step == 1:
            print("published", flush=True)
    """
)


def test_kill_9_mid_publish_never_breaks_latest(tmp_path):
    models = tmp_path / "models"
    rng = random.Random(1234)
    for _attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(models), str(REPO)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "published", proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.6))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        latest = models / LATEST_MODEL_NAME
        logits, value = _session(latest).run(None, {"observation": sample_observations(TTT, 3)})
        assert logits.shape == (3, 9) and np.isfinite(value).all()
        assert int(read_model_metadata(latest)["step"]) >= 1
    # The next publisher cleans up whatever temp files the kills left.
    publish_model(TinyMLP(29, 9), TTT, models, 10_000, META, max_keep=2)
    assert not list(models.glob(".*.tmp"))


def _train(steps: int, during=None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = TinyConv().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    obs = torch.from_numpy(sample_observations(C4, 16, seed=3))
    target_action, target_value = torch.arange(16) % 7, torch.linspace(-1, 1, 16)[:, None]
    for i in range(steps):
        if during:
            during(net, i)
        logits, value = net(obs)
        loss = nn.functional.cross_entropy(logits, target_action) + (value - target_value).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.state_dict()


def test_publishing_on_a_worker_thread_does_not_disturb_training(tmp_path):
    """The daemon publishes off the training thread: the same training with and without
    concurrent publishes must end bit-identical, and every publish must pass its check.
    Publishes are started before the previous one ends (publish_model serialises them)."""
    threads, errors = [], []

    def publish_in_background(net, i):
        if i % 5 == 0:
            snapshot = copy.deepcopy(net)

            def work():
                try:
                    publish_model(snapshot, C4, tmp_path, i, META, max_keep=2)
                except Exception as e:  # pragma: no cover - reported below
                    errors.append(e)

            threads.append(threading.Thread(target=work))
            threads[-1].start()

    alone = _train(20)
    concurrent = _train(20, during=publish_in_background)
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(torch.equal(alone[k], concurrent[k]) for k in alone)
    assert read_model_metadata(tmp_path / LATEST_MODEL_NAME)["step"] in {"15", "10", "5", "0"}


def test_a_publish_copies_the_weights_once(tmp_path):
    """The copy taken on the training thread is the one export and check use: training on
    after the copy changes neither the copy nor the published model."""
    from trainer.model.onnx_export import inference_copy

    net = TinyMLP(TTT.obs_size, TTT.num_actions)
    snapshot = inference_copy(net)
    assert snapshot is not net and inference_copy(snapshot) is snapshot
    obs = torch.from_numpy(sample_observations(TTT, 4, seed=1))
    with torch.no_grad():
        want = snapshot(obs)[0].numpy()
        for p in net.parameters():  # the training module moves on
            p.add_(1.0)
    publish_model(snapshot, TTT, tmp_path, 1, META, max_keep=2)
    sess = ort.InferenceSession(str(tmp_path / LATEST_MODEL_NAME), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"observation": obs.numpy()})[0], want, atol=1e-5)
