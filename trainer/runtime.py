"""Process-level set-up shared by every command: logging, threads, seeds, signals, memory.

torch is imported only inside `setup_torch`, so torch-free programs (the actor, the
evaluator) can use the logging and signal set-up too.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections.abc import Callable

import numpy as np

from trainer.logging_setup import configure_logging


def setup_logging(level: str, fmt: str = "text") -> None:
    """`fmt` is the program's --log-format: "text" or "json" (trainer/logging_setup.py)."""
    configure_logging(level, fmt)


def resident_memory_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StopFlag:
    """A stop request that a signal handler may set: `threading.Event` without its lock.

    Python runs a signal handler in the main thread between two bytecodes. `Event.set()`
    there deadlocks when the main thread was interrupted inside `Event.wait()` while holding
    the Event's own non-reentrant lock: the launcher once ignored a Ctrl-C that way, for
    good. Setting here is one attribute store; waiting polls it, so a stop is seen within
    `POLL_S` from any thread.
    """

    POLL_S = 0.05

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Like `Event.wait`: True once set, False when `timeout` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = self.POLL_S if deadline is None else min(self.POLL_S, deadline - time.monotonic())
            if left <= 0:
                break
            time.sleep(left)
        return self._set


class DeviceUnavailable(RuntimeError):
    """The --device asked for does not exist on this machine (a usage error: exit 2)."""


def setup_torch(threads: int, device: str, seed: int | None):
    import torch

    torch.set_num_threads(threads)
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("--device cuda was asked for but torch.cuda.is_available() is False")
    if device == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable("--device mps was asked for but MPS is not available")
    return torch.device(device)


def install_stop_signals(
    on_first: Callable[[str], None],
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    first_message: str = "finishing the current step, then saving",
    second_message: str = "exiting immediately",
    logger: str = "trainer",
) -> StopFlag:
    """First signal asks for a clean stop (`on_first`); a second one exits at once.

    `on_first` runs inside the signal handler: it may set a `StopFlag`, never take a lock."""
    received = StopFlag()
    log = logging.getLogger(logger)

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if received.is_set():
            log.warning("second %s: %s", name, second_message)
            logging.shutdown()
            os._exit(128 + signum)
        received.set()
        log.info("%s received: %s (signal again to exit at once)", name, first_message)
        on_first(name)

    for sig in signals:
        signal.signal(sig, handler)
    return received
