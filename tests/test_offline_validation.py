"""ValidationHook on a scripted validation loss: best.pt, LR plateau, early stopping, restart;
and the progress line."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

from trainer.hooks.progress_bar import ProgressBarHook
from trainer.hooks.validation import BEST_NAME, PlateauSchedule, ValidationHook
from trainer.training.lr_schedule import LRSchedule
from trainer.training.state import TrainState, load_checkpoint_file


class ScriptedObjective:
    def __init__(self, losses):
        self.losses = list(losses)

    def evaluate(self, batch):
        return {"total_loss": self.losses[0], "policy_accuracy": 0.5}


class FakeLoop:
    def __init__(self, hook, losses):
        self.hook = hook
        self.objective = ScriptedObjective(losses)
        self.epochs_completed = 0
        self.state = TrainState(mode="bc", env_id="tictactoe", spec={}, network={})
        self.stopped = ""

    @property
    def step(self):
        return self.state.step

    def snapshot(self):
        self.state.hooks = {self.hook.name: self.hook.state_dict()}
        return self.state

    def request_stop(self, reason):
        self.stopped = reason

    def epoch(self):
        self.epochs_completed += 1
        self.state.step += 10
        metrics = {}
        self.hook.after_step(self, metrics)
        self.objective.losses.pop(0)
        return metrics


def test_best_plateau_and_early_stopping(tmp_path):
    plateau = PlateauSchedule(LRSchedule(peak=1.0), factor=0.5, patience=1)
    hook = ValidationHook([[0, 0]], per_epoch=True, patience=3, best_dir=tmp_path, plateau=plateau)
    loop = FakeLoop(hook, [1.0, 0.8, 0.9, 0.85, 0.95])
    m = loop.epoch()
    assert m["val_total_loss"] == 1.0 and m["val_policy_accuracy"] == 0.5
    assert load_checkpoint_file(tmp_path / BEST_NAME).hooks["validation"]["best_loss"] == 1.0
    loop.epoch()  # 0.8: new best
    assert load_checkpoint_file(tmp_path / BEST_NAME).step == 20 and plateau(0) == 1.0
    loop.epoch()  # 0.9: worse -> LR halved
    assert plateau(123) == 0.5 and not loop.stopped
    loop.epoch()  # 0.85: still worse than 0.8
    assert plateau(0) == 0.25 and not loop.stopped
    loop.epoch()  # third epoch without improvement
    assert "early stopping" in loop.stopped and "best 0.8000 after epoch 2" in loop.stopped
    assert load_checkpoint_file(tmp_path / BEST_NAME).step == 20  # best.pt kept the best

    # a restart restores the bookkeeping and the LR multiplier
    plateau2 = PlateauSchedule(LRSchedule(peak=1.0), factor=0.5, patience=1)
    hook2 = ValidationHook([[0, 0]], per_epoch=True, patience=3, plateau=plateau2)
    hook2.load_state_dict(hook.state_dict())
    assert hook2.best_loss == 0.8 and hook2.bad_epochs == 3 and plateau2(0) == plateau(0)
    assert hook2.stats()["best_epoch"] == 2 and not math.isnan(hook2.stats()["validation"]["val_total_loss"])


def test_progress_line_has_eta():
    out = io.StringIO()
    bar = ProgressBarHook("bc", 100, stream=out)
    loop = SimpleNamespace(step=0)
    bar.on_start(loop)
    for step in range(1, 101):
        loop.step = step
        bar.after_step(loop, {"total_loss": 1.0})
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "100% 100/100" in lines[-1] and "ETA" in lines[0] and "it/s" in lines[0]


def test_a_best_pt_that_cannot_be_written_is_counted_and_written_by_a_later_validation(tmp_path):
    from trainer.hooks.checkpoint import CheckpointHook, CheckpointWrites

    writes = CheckpointWrites()
    checkpoints = CheckpointHook(tmp_path, every=10, keep=2, writes=writes)
    hook = ValidationHook([[0, 0]], per_epoch=True, best_dir=tmp_path, writes=writes)
    loop = FakeLoop(hook, [1.0, 1.2, 1.1, 0.9])
    # A directory where best.pt goes: the atomic rename fails with a real OSError, even as root.
    (tmp_path / BEST_NAME).mkdir()
    (tmp_path / BEST_NAME / "keep").write_text("x")
    loop.epoch()  # 1.0: the best, not written
    assert writes.failures == 1 and checkpoints.stats()["checkpoint_failures"] == 1
    assert hook.best_loss == 1.0 and (tmp_path / BEST_NAME).is_dir()
    (tmp_path / BEST_NAME / "keep").unlink()
    (tmp_path / BEST_NAME).rmdir()
    loop.epoch()  # 1.2: worse than the best, yet better than no best.pt at all
    assert load_checkpoint_file(tmp_path / BEST_NAME).step == 20 and hook.bad_epochs == 1
    loop.epoch()  # 1.1: better than the best.pt on disk
    assert load_checkpoint_file(tmp_path / BEST_NAME).step == 30
    loop.epoch()  # 0.9: a new best
    saved = load_checkpoint_file(tmp_path / BEST_NAME)
    assert saved.step == 40 and saved.hooks["validation"]["saved_best_loss"] == 0.9
    assert writes.failures == 1 and hook.best_loss == 0.9
