"""The actor's int8 copy of a model (trainer/onnx_int8.py), through real onnxruntime and the
daemon's own networks exported the way it publishes them."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from actor_support import assert_whole_games, publish, read_games, tiny_model_bytes

from actor_stub.config import ActorConfig
from actor_stub.process import run_worker
from trainer import onnx_int8
from trainer.games import get_game
from trainer.onnx_int8 import INT8_METADATA_KEY, quantize_int8
from trainer.onnx_policy import OnnxPolicy


@pytest.fixture
def keep_any_copy(monkeypatch):
    """Take the int8 copy whatever its speed here: these tests are about what the copy is,
    and int8 is faster on some CPUs and slower on others."""
    monkeypatch.setattr(onnx_int8, "MIN_SPEEDUP", 0.0)


def export_default_net(env_id: str, folder: Path) -> Path:
    import torch

    from trainer.model.networks import build_network
    from trainer.model.onnx_export import export_onnx

    torch.manual_seed(0)
    spec = get_game(env_id).spec
    net = build_network(spec).eval()
    with torch.no_grad():  # a trained net's value head is not all near 0; spread it out
        for p in net.parameters():
            p.mul_(1.5)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "latest.onnx"
    export_onnx(net, spec, path, {"step": "77"})
    return path


@pytest.mark.parametrize("env_id", ["tictactoe", "connect4"])  # MLP 128x3, ResNet 64x4
def test_the_int8_copy_keeps_the_contract_and_plays_like_the_model(tmp_path, env_id, keep_any_copy):
    game = get_game(env_id)
    path = export_default_net(env_id, tmp_path)
    exact = OnnxPolicy(path, spec=game.spec)
    fast = OnnxPolicy(path, spec=game.spec, int8=True)
    assert (fast.int8, exact.int8) == (True, False)
    assert (fast.step, fast.env_id) == (77, env_id)
    assert fast.metadata[INT8_METADATA_KEY] == "int8"
    assert {k: v for k, v in fast.metadata.items() if k != INT8_METADATA_KEY} == exact.metadata

    # Integer arithmetic really runs: the weights are stored as int8.
    copy = onnx.load_from_string(quantize_int8(path.read_bytes(), game))
    ops = {n.op_type for n in copy.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2 for t in copy.graph.initializer)

    # Held-out boards (another seed than the calibration's): close to the float32 model.
    states = game.random_positions(300, np.random.default_rng(1))
    obs = np.stack([game.encode(s) for s in states])
    masks = np.stack([game.legal_mask(s) for s in states])
    p_exact, v_exact = exact.evaluate(obs, masks)
    p_fast, v_fast = fast.evaluate(obs, masks)
    assert np.ptp(v_exact) > 0.05  # the comparison below means something
    assert np.abs(p_fast - p_exact).sum(axis=1).mean() < 0.05
    assert np.abs(v_fast - v_exact).max() < 0.1
    assert not p_fast[~masks].any()


def test_the_int8_copy_is_the_same_bytes_every_time(tmp_path):
    game = get_game("tictactoe")
    data = export_default_net("tictactoe", tmp_path).read_bytes()
    assert quantize_int8(data, game) == quantize_int8(data, game)


def test_a_model_without_an_int8_copy_keeps_playing_in_float32_and_says_why(tmp_path):
    path = publish(tmp_path, tiny_model_bytes("tictactoe", meta={"env_id": "othello"}))
    policy = OnnxPolicy(path, int8=True)
    assert not policy.int8 and policy.int8_error is not None
    assert "latest.onnx: no int8 copy" in policy.int8_error and "'othello'" in policy.int8_error
    obs = np.zeros((2, 29), dtype=np.float32)
    logits, _ = policy.run(obs)
    np.testing.assert_array_equal(logits, OnnxPolicy(path).run(obs)[0])


def test_the_int8_copy_is_kept_only_where_it_is_faster(tmp_path, monkeypatch):
    path = export_default_net("connect4", tmp_path)
    measured = OnnxPolicy(path, int8=True)
    assert measured.int8_speedup is not None and 0.05 < measured.int8_speedup < 50
    assert measured.int8 == (measured.int8_speedup >= onnx_int8.MIN_SPEEDUP)
    assert (measured.int8_error is None) == measured.int8

    # A copy that is not fast enough is dropped, and the reason names the speed measured.
    monkeypatch.setattr(onnx_int8, "MIN_SPEEDUP", float("inf"))
    slow = OnnxPolicy(path, int8=True)
    assert not slow.int8 and slow.metadata == OnnxPolicy(path).metadata
    assert f"{slow.int8_speedup:.2f}x the float32 speed on this CPU" in slow.int8_error
    obs = np.zeros((2, 93), dtype=np.float32)
    np.testing.assert_array_equal(slow.run(obs)[0], OnnxPolicy(path).run(obs)[0])


def test_the_actor_searches_with_the_int8_copy_and_writes_whole_games(tmp_path, caplog, keep_any_copy):
    caplog.set_level(logging.INFO, logger="actor_stub")
    export_default_net("connect4", tmp_path / "models")
    cfg = ActorConfig(
        env_id="connect4",
        db=tmp_path / "replay.db",
        model_dir=tmp_path / "models",
        int8=True,
        sims=8,
        episodes=3,
        parallel_games=3,
        seed=5,
    )
    run_worker(cfg, cfg.episodes, cfg.seed, 0, threading.Event())
    games = read_games(cfg.db, "connect4")
    assert len(games) == 3
    assert_whole_games(games, "connect4")
    assert {r["model_step"] for g in games.values() for r in g} == {77}
    assert "latest.onnx (int8 copy): model step 77" in caplog.text
