"""The life of one training run, the same for the daemon and every offline mode.

    claim the checkpoint folder         # one trainer per folder (a lock the OS drops on kill -9)
    resume | --init-from | --fresh      # decide where the weights and counters come from
    build the loop (the command's part: its source, objective and hooks)
    run until done or signalled         # first SIGINT/SIGTERM: finish the step, save, exit 0
    close the source, release the folder
    bad input -> one `error:` line, exit code 2

A command only turns its config into a source, an objective and hooks; everything here is
what a run is, whichever data it trains on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trainer.distributed.process_group import (
    DistContext,
    DistSetupError,
    PeerLost,
    shutdown,
)
from trainer.distributed.ranks import share_from_main
from trainer.hooks.evaluate import BEST_MODEL_NAME
from trainer.hooks.validation import BEST_NAME
from trainer.model.contract import LATEST_MODEL_NAME
from trainer.model.publish import step_files
from trainer.objectives.base import Objective
from trainer.runtime import DeviceUnavailable, install_stop_signals
from trainer.training.loop import DataWaitTimeout, TrainingDiverged, TrainLoop
from trainer.training.state import (
    LATEST_NAME,
    CheckpointError,
    TrainState,
    check_compatible,
    find_latest_checkpoint,
    load_checkpoint_file,
    load_latest_checkpoint,
    restore_rng,
    step_checkpoints,
)

log = logging.getLogger("trainer")

LOCK_NAME = "trainer.lock"
PREVIOUS_RUN_PREFIX = "previous-"

# Checkpoint folders this process holds, with the open lock file of each. The claim is the
# process's, not a run's: building a second loop on the same folder in one process (a
# resume in the same test, say) shares it instead of locking itself out.
_claimed: dict[Path, int] = {}


class MainRankFailed(RuntimeError):
    """Rank 0 could not start the run (its error is in the message); the other ranks exit too."""


class RunFolderBusy(RuntimeError):
    """The checkpoint folder cannot be had: another live process trains into it, or it cannot
    be created or written."""


@dataclass(frozen=True)
class StartPolicy:
    """Where a run's weights and counters come from."""

    mode: str  # daemon | imitation | bc | iql | cql; a resumed checkpoint must be of this mode
    checkpoint_dir: Path
    fresh: bool = False  # start over; the folder's previous run is moved aside, never mixed in
    model_dir: Path | None = None  # its published models are moved aside with it (--fresh)
    init_from: Path | None = None  # a checkpoint of any mode whose policy-value net seeds a new run
    resume: bool = False  # a checkpoint must be there to continue (offline --resume)
    # The daemon continues whatever the folder holds; an offline mode refuses to, unless told
    # --resume, so a second `bc` command never silently extends the first one's run.
    resume_by_default: bool = False


# --- the checkpoint folder ------------------------------------------------------------------


def claim_checkpoint_dir(folder: Path) -> None:
    """Lock `folder` for this process, or raise `RunFolderBusy` naming the holder's pid.

    Taken before anything in the folder is read or swept: a second trainer would otherwise
    delete the first one's in-flight temp files and interleave its checkpoints with them.
    """
    key = folder.resolve()
    if key in _claimed:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunFolderBusy(f"cannot use the checkpoint folder {folder}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderBusy(
            f"{folder} is in use by another trainer (pid {holder}); stop it first or use another --checkpoint-dir"
        ) from None
    with contextlib.suppress(OSError):  # the pid is only for that message; a full disk must not stop a run
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _claimed[key] = fd


def release_checkpoint_dir(folder: Path) -> None:
    fd = _claimed.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the file drops the lock; the file stays for the next holder


def set_aside_previous_run(folder: Path, model_dir: Path | None = None) -> Path | None:
    """Move the folder's checkpoints into `previous-<UTC time>/` (--fresh), keeping them whole,
    and the model folder's published models (step files, latest.onnx, best.onnx) into a
    `previous-<UTC time>/` of its own. Returns the checkpoints' new folder.

    Left in place they would mix with the new run: its first step file pruned as the oldest
    of both, a fallback past a damaged latest.pt landing on the old run's file, the new run's
    first publish overwriting the old latest.onnx, and the gate holding the new run's models
    against the old run's best.onnx.
    """
    name = PREVIOUS_RUN_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # latest.* first: whatever a crash part-way leaves, no latest file names the old run.
    checkpoints = [folder / LATEST_NAME, folder / BEST_NAME] + [p for _, p in step_checkpoints(folder)]
    moved = _move_aside(checkpoints, folder, name, "checkpoint")
    if model_dir is not None:
        models = [model_dir / LATEST_MODEL_NAME, model_dir / BEST_MODEL_NAME]
        _move_aside(models + [p for _, p in step_files(model_dir)], model_dir, name, "model")
    return moved


def _move_aside(files: list[Path], folder: Path, name: str, kind: str) -> Path | None:
    """Move the `files` that exist into `folder/name` (`name.1`, ... if taken), in order."""
    files = [p for p in files if p.is_file()]
    if not files:
        return None
    base = dest = folder / name
    suffix = 1
    while dest.exists():  # two --fresh starts within a second
        dest, suffix = base.with_name(f"{base.name}.{suffix}"), suffix + 1
    dest.mkdir()
    for p in files:
        os.replace(p, dest / p.name)
    log.info("--fresh: moved the previous run's %d %s files to %s", len(files), kind, dest)
    return dest


# --- resume / --init-from / --fresh ----------------------------------------------------------


def start_state(policy: StartPolicy, state: TrainState, objective: Objective) -> TrainState:
    """The state this run starts from: `state` itself (new run) or the resumed checkpoint's.

    Loads the objective's weights as it goes; the caller hands a non-empty `state.source`
    to its source. With --fresh the previous run is moved aside last, once every check
    (the network, --init-from) has passed, so a rejected command leaves it untouched.
    """
    folder = policy.checkpoint_dir
    claim_checkpoint_dir(folder)
    found = find_latest_checkpoint(folder)
    if policy.resume and found is None:
        raise CheckpointError(f"--resume: no checkpoint in {folder}")
    if found is not None and not (policy.fresh or policy.resume or policy.resume_by_default):
        raise CheckpointError(
            f"{folder} already holds a checkpoint ({found.name}); pass --resume to continue "
            "that run or --fresh to start over"
        )
    if found is not None and not policy.fresh:
        return _resume(policy.mode, folder, state, objective)
    if policy.init_from is not None:
        _init_weights(policy.init_from, state, objective)
    if policy.fresh:
        set_aside_previous_run(folder, policy.model_dir)
    return state


def start_state_on_ranks(
    policy: StartPolicy, state: TrainState, objective: Objective, ctx: DistContext
) -> TrainState:
    """`start_state` on rank 0; every other rank takes rank 0's state and weights.

    Only rank 0 reads the checkpoint folder (on another host it may not exist); the others
    receive what it resumed, or the error it stopped on, so no rank waits for a start that
    never comes.
    """
    if not ctx.distributed:
        return start_state(policy, state, objective)
    failure = ""
    if ctx.is_main:
        try:
            state = start_state(policy, state, objective)
        except Exception as exc:
            share_from_main((None, f"{type(exc).__name__}: {exc}"), ctx)
            raise
    state, failure = share_from_main((state, failure), ctx)
    if failure:
        raise MainRankFailed(f"rank 0 could not start the run ({failure})")
    if not ctx.is_main and state.objective:
        objective.load_state_dict(state.objective)
    return state


def _resume(mode: str, folder: Path, state: TrainState, objective: Objective) -> TrainState:
    path, loaded = load_latest_checkpoint(folder)  # not None: the caller found a checkpoint there
    if loaded.mode != mode:
        raise CheckpointError(
            f"checkpoint {path} is from a {loaded.mode} run, not {mode}; pass it with --init-from, or use --fresh"
        )
    check_compatible(loaded, state.env_id, state.spec, state.network, path)
    try:
        objective.load_state_dict(loaded.objective)
    except ValueError as exc:  # settings that shape the objective's own networks
        raise CheckpointError(f"checkpoint {path}: {exc}; match it or use --fresh") from exc
    restore_rng(loaded.rng)
    loaded.config_json = state.config_json  # the settings of this command, not the old one
    log.info("resumed from %s at step %d (%d samples trained)", path, loaded.step, loaded.samples_trained)
    return loaded


def _init_weights(path: Path, state: TrainState, objective: Objective) -> None:
    if not path.exists():
        raise CheckpointError(f"--init-from: {path} not found")
    init = load_checkpoint_file(path)
    check_compatible(init, state.env_id, state.spec, state.network, path)
    if "net" not in init.objective:
        raise CheckpointError(f"--init-from: {path} has no policy-value network ('net')")
    objective.load_policy_weights(init.objective["net"])
    log.info("initialised the policy-value network from %s (%s run, step %d)", path, init.mode, init.step)


# --- running ---------------------------------------------------------------------------------


def run_to_end(loop: TrainLoop) -> None:
    """Train until done or stopped; the source is closed whatever happens."""
    try:
        loop.run()
    finally:
        loop.source.close()
    log.info("%s finished at step %d: %s", loop.state.mode, loop.state.step, loop.stop_reason)


class _StopOnSignal:
    """Before the loop exists there is nothing to save, so a signal just interrupts set-up."""

    def __init__(self) -> None:
        self.loop: TrainLoop | None = None

    def __call__(self, name: str) -> None:
        if self.loop is None:
            raise KeyboardInterrupt
        self.loop.request_stop(name)


@contextlib.contextmanager
def _stop_signals() -> Iterator[_StopOnSignal]:
    # The old handlers come back afterwards: commands also run inside other programs (tests).
    stopper = _StopOnSignal()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install_stop_signals(stopper)
    try:
        yield stopper
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def execute(
    build: Callable[[], TrainLoop],
    checkpoint_dir: Path,
    input_errors: tuple[type[Exception], ...] = (),
) -> int:
    """Build and run one training run; the exit code of the command.

    `input_errors` are the command's own kinds of bad input (a malformed data file, a
    replay DB of another schema); like a checkpoint that does not fit, a busy folder, a
    missing device, data that never came or a diverged run, they end the command with one
    `error:` line and exit code 2. Anything else is a bug and keeps its traceback.
    """
    usage_errors = (
        RunFolderBusy,
        CheckpointError,
        DataWaitTimeout,
        TrainingDiverged,
        DeviceUnavailable,
        DistSetupError,
        MainRankFailed,
        *input_errors,
    )
    with _stop_signals() as stopper:
        try:
            loop = build()
            stopper.loop = loop
            run_to_end(loop)
        except KeyboardInterrupt:
            log.info("stopped before training started")
        except usage_errors as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except PeerLost as exc:  # the checkpoint and model on disk are those of the last save
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            release_checkpoint_dir(checkpoint_dir)
            loop = stopper.loop = None  # the DDP wrapper goes before its group (see shutdown)
            shutdown()
    return 0
