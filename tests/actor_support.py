"""Helpers shared by the actor, evaluator and search tests (no tests here).

`tiny_model_bytes` exports a tiny torch module with the contract's names and shapes, the way
the trainer's publisher does, and adds the metadata the actor reads (env_id, step).
"""

from __future__ import annotations

import io
import os
import sqlite3
import sys
import warnings
from pathlib import Path

import numpy as np

from trainer.games import get_game
from trainer.replay.codec import decode_action, decode_f32

REPO = Path(__file__).resolve().parents[1]


def tiny_model_bytes(env_id: str, step: int | None = 0, seed: int = 0, meta: dict | None = None) -> bytes:
    import onnx
    import torch
    from torch import nn

    spec = get_game(env_id).spec
    torch.manual_seed(seed)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(spec.obs_size, 16), nn.ReLU())
            self.policy = nn.Linear(16, spec.num_actions)
            self.value = nn.Linear(16, 1)

        def forward(self, obs):
            h = self.body(obs)
            return self.policy(h), torch.tanh(self.value(h))

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        _export(Tiny().eval(), spec, buf)
    proto = onnx.load_from_string(buf.getvalue())
    props = {"env_id": env_id, **({"step": str(step)} if step is not None else {}), **(meta or {})}
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=str(v))
    return proto.SerializeToString()


def _export(module, spec, buf) -> None:
    import torch

    torch.onnx.export(
        module,
        (torch.zeros(2, spec.obs_size),),
        buf,
        input_names=["observation"],
        output_names=["policy_logits", "value"],
        dynamic_axes={n: {0: "batch"} for n in ("observation", "policy_logits", "value")},
        opset_version=17,
        dynamo=False,
    )


def publish(model_dir: Path, data: bytes, name: str = "latest.onnx") -> Path:
    """Like the trainer's publisher: temp file in the same folder, then os.replace."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, model_dir / name)
    return model_dir / name


def read_games(db: Path, env_id: str) -> dict[str, list[dict]]:
    """Rows grouped by episode, decoded with the contract's codecs."""
    spec = get_game(env_id).spec
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(transitions)")]
    games: dict[str, list[dict]] = {}
    for row in conn.execute("SELECT * FROM transitions WHERE env_id = ? ORDER BY rowid", (env_id,)):
        r = dict(zip(cols, row))
        r["action"] = decode_action(r["action"], spec.num_actions)
        r["observation"] = decode_f32(r["observation"], spec.obs_size, "observation")
        r["next_observation"] = decode_f32(r["next_observation"], spec.obs_size, "next_observation")
        r["policy_probs"] = decode_f32(r["policy_probs"], spec.num_actions, "policy_probs")
        games.setdefault(r["episode_id"], []).append(r)
    conn.close()
    for rows in games.values():
        rows.sort(key=lambda r: r["step_number"])
    return games


def actor_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "actor_stub", *args]


def actor_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINER_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def assert_whole_games(games: dict[str, list[dict]], env_id: str) -> None:
    """Every episode is a complete, legal game replayed from the start with the right
    rewards, outcomes and policy targets."""
    game = get_game(env_id)
    spec = game.spec
    off, a = spec.legal_mask_offset, spec.num_actions
    for episode, rows in games.items():
        assert [r["step_number"] for r in rows] == list(range(len(rows))), episode
        state = game.initial_state()
        for k, r in enumerate(rows):
            assert r["id"] == f"{episode}-step-{k}"
            np.testing.assert_array_equal(r["observation"], game.encode(state))
            legal = game.legal_mask(state)
            assert legal[r["action"]]
            assert abs(r["policy_probs"].sum() - 1.0) < 1e-4
            assert not r["policy_probs"][~legal].any()
            after = game.apply(state, r["action"])
            np.testing.assert_array_equal(r["next_observation"], game.encode(after))
            assert r["state"] == game.state_blob(state) and r["next_state"] == game.state_blob(after)
            assert r["done"] == int(after.is_terminal) == int(k == len(rows) - 1)
            assert r["reward"] == game.reward_for_mover(state, after)
            state = after
        z = rows[-1]["reward"]
        for k, r in enumerate(rows):
            assert r["game_outcome"] == (z if (len(rows) - 1 - k) % 2 == 0 else -z)
        assert not rows[-1]["next_observation"][off : off + a].any()
