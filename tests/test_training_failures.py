"""What production throws at a run: a loss that turns NaN, a full disk under the checkpoints,
a latest.pt cut short, checkpoint files that are not what they claim. Real processes, real
SQLite, real files; the disk-full test mounts a tiny tmpfs (or, where mounting is refused,
caps the file size with RLIMIT_FSIZE in the child)."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from daemon_harness import (
    DAEMON_FAST,
    REPO,
    daemon_args,
    read_stats,
    start_daemon,
    stop,
    tail_log,
    wait_for,
    wait_for_step,
)
from replay_data import write_random_games
from test_offline_teacher import play_games, write_jsonl

from trainer.games import get_game
from trainer.model.networks import build_network
from trainer.objectives.base import NonFiniteStep
from trainer.objectives.cql import CQLObjective
from trainer.objectives.iql import IQLObjective
from trainer.objectives.policy_value import PolicyValueObjective
from trainer.training.batch import Batch
from trainer.training.state import (
    LATEST_NAME,
    CheckpointError,
    NonFiniteState,
    TrainState,
    checkpoint_path,
    load_checkpoint_file,
    load_latest_checkpoint,
    save_checkpoint,
    step_checkpoints,
)

FAST = DAEMON_FAST
TTT = get_game("tictactoe").spec
# Finite in float32, but a few of them summed in the first layer overflow to inf.
HUGE = 3e38


def tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensors(v)]
    return []


def all_finite(state) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors(state) if t.is_floating_point())


def blow_up(obs: np.ndarray) -> np.ndarray:
    """Stones scaled to HUGE; the legal-move slice stays 0/1 so rows remain valid."""
    out = np.array(obs, dtype=np.float32)
    out[..., : TTT.legal_mask_offset] *= HUGE
    return out


# --- non-finite training --------------------------------------------------------------------


def c4_batch(n: int, huge: bool) -> Batch:
    spec = get_game("connect4").spec
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 2, (n, spec.obs_size)).astype(np.float32)
    if huge:
        obs[:, : spec.legal_mask_offset] *= HUGE
    legal = torch.ones(n, spec.num_actions, dtype=torch.bool)
    action = torch.from_numpy(rng.integers(0, spec.num_actions, n))
    return Batch(
        obs=torch.from_numpy(obs),
        legal_mask=legal,
        policy=torch.nn.functional.one_hot(action, spec.num_actions).float(),
        value=torch.zeros(n),
        action=action,
        reward=torch.zeros(n),
        next_obs=torch.from_numpy(obs.copy()),
        next_legal_mask=legal,
        done=torch.zeros(n),
    )


def c4_objective(kind: str):
    spec = get_game("connect4").spec

    def make_net():
        return build_network(spec, "resnet", channels=8, blocks=1)

    common = {"lr": 1e-3, "weight_decay": 1e-4, "grad_clip": 1.0, "gamma": 0.99, "target_update_rate": 0.05}
    if kind == "alphazero":
        return PolicyValueObjective(make_net(), lr=1e-3, grad_clip=1.0)
    if kind == "iql":
        return IQLObjective(make_net(), make_net, expectile=0.7, beta=3.0, max_weight=100.0, **common)
    return CQLObjective(make_net(), make_net, alpha=1.0, policy_temperature=1.0, **common)


@pytest.mark.parametrize("kind", ["alphazero", "iql", "cql"])
def test_a_nonfinite_step_changes_nothing_not_even_batchnorm_statistics(kind):
    objective = c4_objective(kind)
    objective.train_step(c4_batch(16, huge=False), 1e-3)  # optimiser state exists from here on
    before = [t.clone() for t in tensors(objective.state_dict())]
    with pytest.raises(NonFiniteStep):
        objective.train_step(c4_batch(16, huge=True), 1e-3)
    after = tensors(objective.state_dict())
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert torch.equal(a, b)  # weights, optimiser moments, BatchNorm running stats, targets
    metrics = objective.train_step(c4_batch(16, huge=False), 1e-3)
    assert np.isfinite(metrics["total_loss"]) and all_finite(objective.state_dict())


def append_huge_rows(db: Path, n: int) -> None:
    """Copies of real rows whose observations hold HUGE stones (valid, finite float32)."""
    conn = sqlite3.connect(db)
    cols = [c[1] for c in conn.execute("PRAGMA table_info(transitions)")]
    rows = conn.execute("SELECT * FROM transitions LIMIT ?", (n,)).fetchall()
    for i, row in enumerate(rows):
        r = dict(zip(cols, row))
        r["id"] = f"huge-{uuid.uuid4().hex}-{i}"
        r["observation"] = blow_up(np.frombuffer(r["observation"], np.float32)).tobytes()
        conn.execute(
            f"INSERT INTO transitions ({', '.join(r)}) VALUES ({', '.join('?' * len(r))})", tuple(r.values())
        )
    conn.commit()
    conn.close()


def onnx_outputs(path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    obs = np.zeros((4, TTT.obs_size), np.float32)
    obs[:, TTT.legal_mask_offset :] = 1.0
    logits, value = sess.run(None, {"observation": obs})
    return int(sess.get_modelmeta().custom_metadata_map["step"]), logits, value


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_daemon_skips_nonfinite_steps_then_stops_with_the_last_finite_weights(tmp_path):
    db = tmp_path / "replay.db"
    write_random_games(db, "tictactoe", 40, seed=21)
    proc = start_daemon(
        tmp_path,
        "--steps",
        "0",
        "--window",
        "64",
        "--batch-size",
        "32",
        "--checkpoint-interval",
        "10",
        "--max-checkpoints",
        "50",
        *FAST,
    )
    wait_for_step(tmp_path, 30, 90, proc)
    # The actors start writing garbage: the window fills with rows that overflow the net.
    append_huge_rows(db, 200)
    assert proc.wait(90) == 2, tail_log(tmp_path)
    log = (tmp_path / "daemon.log").read_text()
    assert len(error_lines(log)) == 1 and "non-finite" in error_lines(log)[0], log[-3000:]

    stats = read_stats(tmp_path)
    assert stats["state"] == "stopped"
    assert stats["nonfinite_steps"] >= 20 and type(stats["nonfinite_steps"]) is int
    latest = load_checkpoint_file(tmp_path / "checkpoints" / LATEST_NAME)
    assert latest.step == stats["step"] >= 30
    for _, path in step_checkpoints(tmp_path / "checkpoints"):
        assert all_finite(load_checkpoint_file(path).objective), path
    step, logits, value = onnx_outputs(tmp_path / "models" / "latest.onnx")
    assert step == latest.step and np.isfinite(logits).all() and np.isfinite(value).all()


def test_offline_mode_stops_on_nonfinite_training_with_exit_2(tmp_path):
    """CQL: the twin-Q objectives' step, through the offline modes' command."""
    games = play_games(30, seed=4)
    for plies in games:
        for p in plies:
            p["obs"], p["next_obs"] = blow_up(p["obs"]), blow_up(p["next_obs"])
    data = write_jsonl(tmp_path / "huge.jsonl", games)
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "cql",
        "--steps",
        "500",
        "--data",
        str(data),
        "--model-dir",
        str(tmp_path / "models"),
        "--checkpoint-dir",
        str(tmp_path / "checkpoints"),
        "--stats",
        str(tmp_path / "stats.json"),
        "--batch-size",
        "16",
        "--hidden",
        "32",
        "--layers",
        "1",
        "--threads",
        "1",
        "--no-progress",
    ]
    run = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert len(error_lines(run.stderr)) == 1 and "non-finite" in error_lines(run.stderr)[0], run.stderr[
        -3000:
    ]
    stats = read_stats(tmp_path)
    assert stats["state"] == "stopped" and stats["nonfinite_steps"] == 20 and stats["step"] == 0
    # Nothing trained, so nothing NaN was saved or published.
    assert not (tmp_path / "models" / "latest.onnx").exists()
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        assert all_finite(load_checkpoint_file(path).objective), path


def test_weights_gone_nan_are_never_saved_over_good_checkpoints(tmp_path):
    """Whatever let NaN into the weights (an update that overflowed them), the last good
    checkpoint must survive it."""
    state = TrainState(
        mode="daemon",
        env_id="tictactoe",
        spec={},
        network={},
        step=10,
        objective={"net": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}},
    )
    save_checkpoint(state, tmp_path, keep=5)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    state.step = 20
    state.objective["optimizer"]["state"][0]["exp_avg"][1] = float("inf")
    with pytest.raises(NonFiniteState, match="optimizer.state.0.exp_avg"):
        save_checkpoint(state, tmp_path, keep=5)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


# --- a full disk under the checkpoints --------------------------------------------------------


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str):
    """Mount a tmpfs of `size` at `path`; yields whether that worked (it may be refused)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> Path:
    """Write zeros into `folder` until its filesystem is full."""
    filler = folder / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_a_full_disk_under_the_checkpoints_is_counted_and_training_continues(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=22)
    ckpt = tmp_path / "checkpoints"
    args = ["--checkpoint-dir", str(ckpt), "--checkpoint-interval", "10", "--max-checkpoints", "50", *FAST]
    with tiny_tmpfs(ckpt, "4m") as mounted:
        if mounted:
            proc = start_daemon(tmp_path, "--steps", "0", *args)
            wait_for(
                lambda: (ckpt / LATEST_NAME).exists() and (ckpt / LATEST_NAME).stat().st_size > 0,
                90,
                "a first checkpoint",
                proc,
                tmp_path,
            )
            filler = fill(ckpt)
            good = (ckpt / LATEST_NAME).read_bytes()
            good_step = load_checkpoint_file(ckpt / LATEST_NAME).step
            failed = wait_for(
                lambda: (s := read_stats(tmp_path)) and s.get("checkpoint_failures", 0) >= 2 and s,
                90,
                "failed checkpoints counted",
                proc,
                tmp_path,
            )
            wait_for_step(tmp_path, failed["step"] + 20, 60, proc)  # still training
            assert (ckpt / LATEST_NAME).read_bytes() == good
            # An attempt may be writing its temp file at this moment; what must not happen is
            # a failed attempt leaving its half-written file behind to hold the space.
            seen = set(ckpt.glob(".*.tmp"))
            wait_for(
                lambda: not seen & set(ckpt.glob(".*.tmp")),
                10,
                f"failed checkpoints' temp files removed ({sorted(p.name for p in seen)})",
                proc,
                tmp_path,
            )
            filler.unlink()
            wait_for(
                lambda: load_checkpoint_file(ckpt / LATEST_NAME).step > good_step + 10,
                60,
                "a checkpoint once there is space again",
                proc,
                tmp_path,
            )
            assert stop(proc) == 0, tail_log(tmp_path)
        else:
            # The previous run's checkpoint is on disk; this run may not write a file that large.
            assert start_daemon(tmp_path, "--steps", "20", *args).wait(90) == 0
            good = (ckpt / LATEST_NAME).read_bytes()
            limit = len(good) // 2

            def cap_file_size() -> None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

            env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
            with open(tmp_path / "capped.log", "wb") as out:
                proc = subprocess.Popen(
                    daemon_args(tmp_path, "--steps", "0", *args),
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=cap_file_size,
                )
                failed = wait_for(
                    lambda: (s := read_stats(tmp_path)) and s.get("checkpoint_failures", 0) >= 2 and s,
                    90,
                    "failed checkpoints counted",
                    proc,
                    tmp_path,
                    "capped.log",
                )
                wait_for_step(tmp_path, failed["step"] + 20, 60, proc)
                assert stop(proc) == 0, tail_log(tmp_path, "capped.log")
            assert (ckpt / LATEST_NAME).read_bytes() == good
            assert not list(ckpt.glob(".*.tmp"))
    log = (tmp_path / ("daemon.log" if mounted else "capped.log")).read_text()
    cause = "No space left on device" if mounted else "File too large"
    assert cause in log and "inline_container" not in log, log[-3000:]


# --- latest.pt cut short -------------------------------------------------------------------


def test_truncated_latest_falls_back_to_the_newest_step_file_that_loads(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 30, seed=23)
    args = ["--checkpoint-interval", "10", "--max-checkpoints", "50", *FAST]
    assert start_daemon(tmp_path, "--steps", "30", *args).wait(90) == 0, tail_log(tmp_path)
    ckpt = tmp_path / "checkpoints"
    for path in (ckpt / LATEST_NAME, checkpoint_path(ckpt, 30)):  # cut short, like a full disk would
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    step20 = checkpoint_path(ckpt, 20).read_bytes()

    assert start_daemon(tmp_path, "--steps", "40", *args).wait(90) == 0, tail_log(tmp_path)
    # Resumed from step 20: its file is untouched, 30 and 40 are written anew.
    assert checkpoint_path(ckpt, 20).read_bytes() == step20
    assert load_checkpoint_file(checkpoint_path(ckpt, 30)).step == 30
    assert load_checkpoint_file(ckpt / LATEST_NAME).step == 40
    assert checkpoint_path(ckpt, 20).name in tail_log(tmp_path, lines=200)


def test_when_no_checkpoint_loads_the_error_names_latest_and_nothing_is_touched(tmp_path):
    (tmp_path / LATEST_NAME).write_bytes(b"PK\x03\x04 cut")
    checkpoint_path(tmp_path, 10).write_bytes(b"")
    with pytest.raises(CheckpointError, match=LATEST_NAME):
        load_latest_checkpoint(tmp_path)
    assert (tmp_path / LATEST_NAME).read_bytes() == b"PK\x03\x04 cut"
    assert checkpoint_path(tmp_path, 10).exists()
    assert load_latest_checkpoint(tmp_path / "empty") is None


# --- checkpoint files that are not what they claim ------------------------------------------------


class RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


class PlainObject:
    pass


@pytest.mark.parametrize("payload", [RunsCode(), PlainObject()], ids=["blocked_module", "unknown_class"])
def test_a_pickled_payload_is_refused_without_advice_to_unpickle_it(payload, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": 1, "objective": payload}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "weights_only" not in message and "trusted source" not in message, message


def test_a_checkpoint_lacking_fields_names_them(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"format": 1, "mode": "daemon", "step": 3}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    message = str(err.value)
    assert str(path) in message
    for field in ("env_id", "spec", "network"):
        assert field in message
