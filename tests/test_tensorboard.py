"""`--tensorboard DIR`: the real daemon's event files, read back with TensorBoard's own
readers, hold the scalars at the training steps, and a run resumed from an older checkpoint
(as after a crash) continues the curves with the points past that checkpoint purged."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from daemon_harness import REPO, daemon_args, read_stats, start_daemon, tail_log
from replay_data import write_random_games
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

RUN = [
    "--batch-size",
    "16",
    "--min-rows",
    "50",
    "--max-reuse",
    "0",
    "--threads",
    "1",
    "--stats-interval",
    "5",
    "--checkpoint-interval",
    "20",
    "--eval-interval",
    "20",
    "--eval-games",
    "10",
]
TAGS = (
    "loss/total",
    "loss/policy",
    "loss/value",
    "train/learning_rate",
    "throughput/samples_per_sec",
    "throughput/wait_fraction",
    "replay/window_size",
)


def run_to(data: Path, steps: int) -> dict:
    proc = start_daemon(data, "--steps", str(steps), "--tensorboard", str(data / "tb"), *RUN)
    assert proc.wait(120) == 0, tail_log(data)
    return read_stats(data)


def file_events(path: Path) -> tuple[dict[str, list[int]], list[int]]:
    """Steps per scalar tag, and steps of session starts, of one event file as written."""
    steps: dict[str, list[int]] = {}
    starts = []
    for event in EventFileLoader(str(path)).Load():
        if event.HasField("session_log"):
            starts.append(event.step)
        for v in event.summary.value:
            steps.setdefault(v.tag, []).append(event.step)
    return steps, starts


def curves(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_scalars_at_the_training_steps_across_a_resume_from_an_older_checkpoint(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 60, seed=31)
    first = run_to(tmp_path, 40)
    saved = tmp_path / "checkpoints-at-40"
    shutil.copytree(tmp_path / "checkpoints", saved)
    run_to(tmp_path, 80)
    # As if the second run had crashed after its points were written but before any checkpoint
    # past step 40 was: the third run resumes from step 40.
    shutil.rmtree(tmp_path / "checkpoints")
    shutil.copytree(saved, tmp_path / "checkpoints")
    last = run_to(tmp_path, 100)

    files = sorted((tmp_path / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 3
    (a, _), (b, _), (c, c_starts) = (file_events(f) for f in files)
    assert max(a["loss/total"]) == 40 and max(b["loss/total"]) == 80 and max(c["loss/total"]) == 100
    assert min(b["loss/total"]) > 40 and min(c["loss/total"]) > 40
    assert c_starts == [41]  # purge_step: from the first step this run trains

    acc = curves(tmp_path / "tb")
    for tag in TAGS:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)  # one point per step, in order
        assert steps == sorted(set(a[tag]) | set(c[tag])), tag  # the abandoned run's points are gone
    lr = {e.step: e.value for e in acc.Scalars("train/learning_rate")}
    assert abs(lr[100] - last["learning_rate"]) < 1e-9 and abs(lr[40] - first["learning_rate"]) < 1e-9
    total = {e.step: e.value for e in acc.Scalars("loss/total")}
    assert abs(total[100] - last["total_loss"]) < 1e-6
    # Evaluations at the step of the model they played: each point is an eval_history entry,
    # and the first run's entries (before the resume point) all survive.
    entries = {(e["step"], e["win_rate"]) for e in first["eval_history"] + last["eval_history"]}
    points = (
        [(e.step, e.value) for e in acc.Scalars("eval/win_rate")]
        if "eval/win_rate" in acc.Tags()["scalars"]
        else []
    )
    assert all(any(s == step and abs(w - win) < 1e-6 for s, w in entries) for step, win in points), (
        points,
        entries,
    )
    assert {e["step"] for e in first["eval_history"]} <= {step for step, _ in points}


def test_a_missing_tensorboard_package_is_one_clear_error(tmp_path):
    fake = tmp_path / "site" / "tensorboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    env = {"PYTHONPATH": f"{tmp_path / 'site'}:{REPO}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        daemon_args(tmp_path, "--tensorboard", str(tmp_path / "tb")),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--tensorboard" in errors[0] and "pip install" in errors[0], r.stderr
    assert not (tmp_path / "tb").exists()
