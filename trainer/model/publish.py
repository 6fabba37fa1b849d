"""Publishing a model into the model folder (docs/contract.md section 3, "Files").

A publish exports to a temp file beside the final names, verifies it, and only then makes it
visible, first as `model_step_{step:06d}.onnx`, then as `latest.onnx`, each by its own atomic
rename, so an actor watching `latest.onnx` sees either the previous good model or the new
whole one, never a half file, a failed export or a symlink.

One publishing process per model folder (the contract: the trainer writes, others read).
Within the process, publishes are serialised, so a worker-thread publish and a final publish
at shutdown cannot interleave their renames or delete each other's temp files.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from trainer.atomic_files import atomic_path, remove_stale_temp_files
from trainer.games.base import GameSpec
from trainer.model.contract import LATEST_MODEL_NAME
from trainer.model.onnx_export import Exporter, PublishError, export_onnx, inference_copy, verify_onnx

_STEP_FILE = re.compile(r"^model_step_(\d+)\.onnx$")
# Provenance the contract asks for that only the caller knows (step is an argument).
REQUIRED_METADATA = ("samples_trained", "rows_seen")

_PUBLISH_LOCK = threading.Lock()
_swept_dirs: set[Path] = set()  # folders whose stale temp files this process has removed

__all__ = [
    "PublishError",
    "PublishResult",
    "publish_model",
    "prune_step_files",
    "step_file_name",
    "step_files",
]


@dataclass(frozen=True)
class PublishResult:
    path: Path  # the step file
    latest: Path
    seconds: float  # whole publish, wall clock
    export_seconds: float = 0.0
    verify_seconds: float = 0.0
    move_seconds: float = 0.0  # fsync + rename of both names, and pruning


def step_file_name(step: int) -> str:
    return f"model_step_{step:06d}.onnx"


def step_files(model_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every step file in the folder, oldest step first."""
    found = []
    folder = Path(model_dir)
    if folder.is_dir():
        for p in folder.iterdir():
            m = _STEP_FILE.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def prune_step_files(model_dir: str | Path, max_keep: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the `max_keep` highest-step files (from this run or earlier ones).

    `keep` (the file just published) survives even when an earlier run left higher steps,
    so `stats.json`'s `last_checkpoint` never names a deleted file. `latest.onnx` is not a
    step file and is never touched.
    """
    if max_keep < 1:
        raise ValueError(f"max_keep must be >= 1, got {max_keep}")
    files = [p for _, p in step_files(model_dir)]
    doomed = [p for p in files[: max(0, len(files) - max_keep)] if keep is None or p != keep]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return doomed


def publish_model(
    module: nn.Module,
    spec: GameSpec,
    model_dir: str | Path,
    step: int,
    metadata: dict[str, str],
    max_keep: int,
    *,
    exporter: Exporter = "torchscript",
) -> PublishResult:
    """Export, verify and publish `module` as step `step`; prune old step files.

    `metadata` must hold `samples_trained` and `rows_seen` (ValueError otherwise, before any
    file is touched). Raises `PublishError` if the export fails or the file fails
    `verify_onnx`: nothing is published, the temp file is removed, `latest.onnx` still holds
    the previous model.
    """
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"publish metadata lacks {missing}")
    if max_keep < 1:
        raise ValueError(f"max_keep must be >= 1, got {max_keep}")
    with _PUBLISH_LOCK:
        return _publish_locked(module, spec, Path(model_dir), step, metadata, max_keep, exporter)


def _publish_locked(
    module: nn.Module,
    spec: GameSpec,
    model_dir: Path,
    step: int,
    metadata: dict[str, str],
    max_keep: int,
    exporter: Exporter,
) -> PublishResult:
    t0 = time.perf_counter()
    model_dir.mkdir(parents=True, exist_ok=True)
    # Temp files left by a killed publisher, swept on this process's first publish into the
    # folder (its start): later on, every temp file there is one of our own in flight.
    key = model_dir.resolve()
    if key not in _swept_dirs:
        remove_stale_temp_files(model_dir)
        _swept_dirs.add(key)

    net = inference_copy(module)  # one copy for export and check, taken before any I/O
    dest = model_dir / step_file_name(step)
    latest = model_dir / LATEST_MODEL_NAME
    props = {**{str(k): str(v) for k, v in metadata.items()}, "step": str(int(step))}
    # atomic_path renames onto `dest` only if the block exits cleanly: a failed export or
    # check raises out of it and the temp file is deleted.
    with atomic_path(dest) as tmp:
        t = time.perf_counter()
        try:
            export_onnx(net, spec, tmp, props, exporter=exporter)
        except Exception as e:
            raise PublishError(f"ONNX export of step {step} failed: {e}") from e
        t_export = time.perf_counter() - t
        t = time.perf_counter()
        try:
            verify_onnx(tmp, net, spec)
        except PublishError as e:
            raise PublishError(f"model for step {step} not published: {e}") from e
        t_verify = time.perf_counter() - t
        t_move = time.perf_counter()
    # A copy, not a symlink or hardlink: `latest.onnx` is its own inode with a fresh mtime
    # (actors poll it), and stays valid whatever pruning does to the step files.
    with atomic_path(latest) as tmp:
        shutil.copyfile(dest, tmp)
    prune_step_files(model_dir, max_keep, keep=dest)
    now = time.perf_counter()
    return PublishResult(
        path=dest,
        latest=latest,
        seconds=now - t0,
        export_seconds=t_export,
        verify_seconds=t_verify,
        move_seconds=now - t_move,
    )
