"""The one persisted object a resume needs, and its crash-safe checkpoint files.

Everything that drives schedules and data use lives in `TrainState`: the global step,
samples trained, the objective's weights and optimisers, the source's cursor and counters
(window, reuse budget), RNG states, the config, and any hook bookkeeping (best validation
loss, ...). It is written with `torch.save` through `atomic_path` and read back with
`weights_only=True`, so a checkpoint can never execute code when loaded.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import re
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer import __version__
from trainer.atomic_files import atomic_path, remove_stale_temp_files

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
LATEST_NAME = "latest.pt"
_STEP_RE = re.compile(r"^ckpt_step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run (other game, other net, corrupt)."""


class NonFiniteState(ValueError):
    """A state holding NaN/inf tensors: saving it would replace good checkpoints with garbage."""


@dataclass
class TrainState:
    mode: str  # daemon | imitation | bc | iql | cql
    env_id: str
    spec: dict[str, Any]  # GameSpec fields, so a checkpoint is self-describing
    network: dict[str, Any]  # architecture settings (see networks.describe_network)
    step: int = 0
    samples_trained: int = 0
    nonfinite_steps: int = 0  # training steps skipped for a NaN/inf loss or gradient
    objective: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    hooks: dict[str, Any] = field(default_factory=dict)  # per-hook bookkeeping, by hook name
    rng: dict[str, Any] = field(default_factory=dict)
    config_json: str = "{}"
    trainer_version: str = __version__
    saved_at: float = 0.0


def capture_rng() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_plain(np.random.get_state()),
        "python": json.dumps(random.getstate()),
    }


def restore_rng(rng: dict[str, Any]) -> None:
    if not rng:
        return
    torch.set_rng_state(rng["torch"])
    np.random.set_state(_np_state_from_plain(rng["numpy"]))
    random.setstate(_tuples(json.loads(rng["python"])))


def _np_state_to_plain(state) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _np_state_from_plain(d: dict[str, Any]):
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _tuples(x):
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


# --- files ----------------------------------------------------------------------------------


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"ckpt_step_{step:06d}.pt"


def save_checkpoint_as(state: TrainState, path: Path) -> Path:
    """Write `state` atomically to `path` (e.g. best.pt) in the checkpoint format.

    A failed write (disk full, quota) raises OSError naming the cause and leaves `path`
    as it was.
    """
    state.saved_at = time.time()
    state.rng = capture_rng()
    payload = {"format": CHECKPOINT_FORMAT, **asdict(state)}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # Through a Python file object: torch.save to a path writes from C++ and turns
        # ENOSPC into "enforce fail at inline_container.cc", losing the cause.
        torch.save(payload, f)
    return path


def save_checkpoint(state: TrainState, folder: Path, keep: int) -> Path:
    """Write `ckpt_step_N.pt` and `latest.pt` atomically, then prune old step files.

    On OSError the files already there are untouched (at worst the new step file exists
    and latest.pt still holds the previous step), and nothing is pruned. A state whose
    objective holds NaN/inf is refused with NonFiniteState before anything is written.
    """
    bad = nonfinite_tensors(state.objective)
    if bad:
        raise NonFiniteState(f"NaN or inf in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    folder.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint_as(state, checkpoint_path(folder, state.step))
    # latest.pt is a second atomic copy rather than a link, so it is valid on every
    # filesystem (bind mounts, Windows shares) and never points at a pruned file.
    with atomic_path(folder / LATEST_NAME) as tmp:
        shutil.copyfile(path, tmp)
    prune_checkpoints(folder, keep)
    return path


def nonfinite_tensors(tree: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in `tree` that hold NaN or inf."""
    named = list(_float_tensors(tree, prefix))
    if not named or bool(torch.stack([torch.isfinite(t).all() for _, t in named]).all()):
        return []  # one host sync for the whole state in the usual case
    return [name for name, t in named if not bool(torch.isfinite(t).all())]


def _float_tensors(tree: Any, prefix: str):
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point():
            yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _float_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _float_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `ckpt_step_N.pt` in the folder, oldest step first."""
    return sorted(
        (int(m.group(1)), p) for p in folder.glob("ckpt_step_*.pt") if (m := _STEP_RE.match(p.name))
    )


def prune_checkpoints(folder: Path, keep: int) -> None:
    steps = step_checkpoints(folder)
    for _, p in steps[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)


def load_checkpoint_file(path: Path) -> TrainState:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file; the message says which
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a trainer checkpoint (format {payload.get('format') if isinstance(payload, dict) else '?'})"
        )
    payload.pop("format")
    fields = TrainState.__dataclass_fields__
    missing = [
        k
        for k, f in fields.items()
        if k not in payload and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks the fields {', '.join(missing)} (damaged or written by another program)"
        )
    return TrainState(**{k: v for k, v in payload.items() if k in fields})


def _load_failure(exc: Exception) -> str:
    """One line on why torch.load refused a file.

    Its weights-only refusal is a page of advice around the unpickler's reason, advice
    that suggests `weights_only=False`, the one thing we never do. The wording moves
    between torch versions, so the reason is the first paragraph (or the part after
    "WeightsUnpickler error:") that is not advice.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or text.startswith("Weights only load failed"):
        return f"not a file of plain tensors and containers ({_refusal_reason(text)})"
    return " ".join(text.split()) or f"{type(exc).__name__} (empty or truncated file?)"


def _refusal_reason(text: str) -> str:
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split("WeightsUnpickler error:")[-1].split())
        if (
            paragraph
            and "weights_only" not in paragraph
            and not paragraph.startswith("Check the documentation")
        ):
            return paragraph.split(". ")[0].rstrip(".")
    return "it holds objects other than tensors and plain containers"


def find_latest_checkpoint(folder: Path) -> Path | None:
    """latest.pt, or the newest step file if latest.pt is missing (not checked: see
    `load_latest_checkpoint`, which also falls back when it does not load)."""
    remove_stale_temp_files(folder)
    latest = folder / LATEST_NAME
    if latest.exists():
        return latest
    steps = step_checkpoints(folder)
    return steps[-1][1] if steps else None


def load_latest_checkpoint(folder: Path) -> tuple[Path, TrainState] | None:
    """The newest checkpoint in `folder` that loads: latest.pt, else step files newest first.

    A latest.pt cut short (disk full, a copy interrupted) must not strand a run whose step
    files are intact; each file passed over is logged with why. None for a folder without
    checkpoints; CheckpointError (latest.pt's, or the newest file's) when none loads.
    """
    remove_stale_temp_files(folder)
    candidates = [folder / LATEST_NAME] if (folder / LATEST_NAME).exists() else []
    candidates += [p for _, p in reversed(step_checkpoints(folder))]
    first_error: CheckpointError | None = None
    for path in candidates:
        try:
            state = load_checkpoint_file(path)
        except CheckpointError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            first_error = first_error or exc
            continue
        if first_error is not None:
            log.warning("resuming from %s, the newest checkpoint that loads", path)
        return path, state
    if first_error is not None:
        raise first_error
    return None


def check_compatible(state: TrainState, env_id: str, spec: dict, network: dict, path: Path) -> None:
    if state.env_id != env_id:
        raise CheckpointError(
            f"checkpoint {path} is for env_id {state.env_id!r}, not {env_id!r}; "
            "use another --checkpoint-dir, or --fresh to start over"
        )
    if state.spec != spec:
        raise CheckpointError(
            f"checkpoint {path} has game shapes {state.spec}, this run has {spec}; use --fresh"
        )
    if state.network != network:
        raise CheckpointError(
            f"checkpoint {path} has network {state.network}, this run asks for {network}; "
            "match the network flags or use --fresh"
        )
