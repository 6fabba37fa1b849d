"""What every run does whatever it trains on: one trainer per checkpoint folder, and --fresh
that starts a new run beside the old one instead of inside it. Real processes and files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from daemon_harness import DAEMON_FAST, REPO, start_daemon, stop, tail_log, wait_for_step
from replay_data import write_random_games
from test_offline_teacher import play_games, write_jsonl

from trainer.commands import bc
from trainer.model.publish import step_file_name, step_files
from trainer.training.run import LOCK_NAME, PREVIOUS_RUN_PREFIX
from trainer.training.state import LATEST_NAME, load_checkpoint_file, step_checkpoints

FAST = [*DAEMON_FAST, "--eval-interval", "0"]
BC_FAST = ["--hidden", "16", "--layers", "1", "--batch-size", "32", "--no-progress", "--log-level", "ERROR"]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def test_a_second_trainer_on_the_same_folder_is_refused_until_the_first_dies(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 30, seed=1)
    first = start_daemon(tmp_path, "--steps", "0", "--checkpoint-interval", "10", *FAST)
    second = None
    try:
        wait_for_step(tmp_path, 15, 60, first)
        second = start_daemon(
            tmp_path, "--steps", "0", "--checkpoint-interval", "10", *FAST, log_name="second.log"
        )
        # An offline mode aimed at the daemon's checkpoint folder is refused the same way; it
        # starts while the second daemon does (each refusal only needs the first one running).
        data = write_jsonl(tmp_path / "t.jsonl", play_games(10, seed=2))
        offline = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer",
                "bc",
                "--data",
                str(data),
                "--epochs",
                "1",
                "--fresh",
                "--model-dir",
                str(tmp_path / "bc-models"),
                "--checkpoint-dir",
                str(tmp_path / "checkpoints"),
                *BC_FAST,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert offline.returncode == 2 and f"pid {first.pid}" in offline.stderr.splitlines()[-1], (
            offline.stderr
        )
        assert second.wait(60) == 2
        errors = [ln for ln in tail_log(tmp_path, "second.log").splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and f"pid {first.pid}" in errors[0], tail_log(tmp_path, "second.log")

        # The refused runs took nothing from the first: it trains on and stops cleanly.
        step = wait_for_step(tmp_path, 30, 60, first)["step"]
        assert stop(first) == 0
        assert load_checkpoint_file(tmp_path / "checkpoints" / LATEST_NAME).step >= step
        assert all(load_checkpoint_file(p).step == s for s, p in step_checkpoints(tmp_path / "checkpoints"))

        # kill -9 leaves no stale lock behind: the OS drops it with the process.
        third = start_daemon(
            tmp_path, "--steps", "0", "--checkpoint-interval", "10", *FAST, log_name="third.log"
        )
        try:
            wait_for_step(tmp_path, step + 5, 60, third)
            os.kill(third.pid, signal.SIGKILL)
            third.wait(30)
        finally:
            _kill(third)
        fourth = start_daemon(
            tmp_path, "--steps", str(step + 20), "--checkpoint-interval", "10", *FAST, log_name="fourth.log"
        )
        assert fourth.wait(90) == 0, tail_log(tmp_path, "fourth.log")
        assert (tmp_path / "checkpoints" / LOCK_NAME).exists()
    finally:
        _kill(first)
        if second is not None:
            _kill(second)


def test_daemon_fresh_moves_the_previous_run_aside(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 30, seed=3)
    args = ["--checkpoint-interval", "10", "--max-checkpoints", "3", *FAST]
    assert start_daemon(tmp_path, "--steps", "40", *args).wait(90) == 0, tail_log(tmp_path)
    folder = tmp_path / "checkpoints"
    old = {s: p.read_bytes() for s, p in step_checkpoints(folder)}
    assert sorted(old) == [20, 30, 40]

    assert start_daemon(tmp_path, "--steps", "20", "--fresh", *args).wait(90) == 0, tail_log(tmp_path)
    # The new run alone in the folder: its own step files, its own latest.pt.
    new = step_checkpoints(folder)
    assert [s for s, _ in new] == [10, 20]
    assert all(load_checkpoint_file(p).step == s for s, p in new)
    assert load_checkpoint_file(folder / LATEST_NAME).step == 20
    # The old run whole, beside it.
    (previous,) = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREVIOUS_RUN_PREFIX)]
    assert {s: p.read_bytes() for s, p in step_checkpoints(previous)} == old
    assert load_checkpoint_file(previous / LATEST_NAME).step == 40

    # A plain restart continues the new run, not the old one.
    assert start_daemon(tmp_path, "--steps", "30", *args).wait(90) == 0, tail_log(tmp_path)
    assert load_checkpoint_file(folder / LATEST_NAME).step == 30  # from the old run's 40 it would stay at 40


def test_offline_fresh_moves_the_previous_run_aside(tmp_path):
    data = write_jsonl(tmp_path / "t.jsonl", play_games(40, seed=4))
    argv = ["--data", str(data), "--model-dir", str(tmp_path / "out" / "models"), *BC_FAST]
    assert bc.main([*argv, "--epochs", "2"]) == 0
    folder = tmp_path / "out" / "checkpoints"
    old = {p.name: p.read_bytes() for p in folder.glob("*.pt")}
    assert "best.pt" in old and LATEST_NAME in old

    models = tmp_path / "out" / "models"
    old_models = {p.name: p.read_bytes() for p in models.glob("*.onnx")}
    assert "latest.onnx" in old_models and len(old_models) > 1

    assert bc.main([*argv, "--epochs", "1", "--fresh"]) == 0
    (previous,) = [p for p in folder.iterdir() if p.is_dir()]
    assert {p.name: p.read_bytes() for p in previous.glob("*.pt")} == old
    new_step = load_checkpoint_file(folder / LATEST_NAME).step
    assert new_step < load_checkpoint_file(previous / LATEST_NAME).step
    # The published models too: the old run's whole, beside the new run's alone.
    (previous_models,) = [p for p in models.iterdir() if p.is_dir()]
    assert previous_models.name == previous.name
    assert {p.name: p.read_bytes() for p in previous_models.glob("*.onnx")} == old_models
    assert [s for s, _ in step_files(models)][-1] == new_step
    assert (models / "latest.onnx").read_bytes() == (models / step_file_name(new_step)).read_bytes()
