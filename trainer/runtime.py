"""Process-level set-up shared by every command: logging, threads, seeds, signals."""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
from typing import Callable

import numpy as np
import torch


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def setup_torch(threads: int, device: str, seed: int | None) -> torch.device:
    torch.set_num_threads(threads)
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    if device == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps was asked for but MPS is not available")
    return torch.device(device)


def install_stop_signals(on_first: Callable[[str], None]) -> threading.Event:
    """First SIGINT/SIGTERM asks for a clean stop; a second one exits at once."""
    received = threading.Event()

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if received.is_set():
            logging.getLogger("trainer").warning("second %s: exiting immediately", name)
            os._exit(128 + signum)
        received.set()
        logging.getLogger("trainer").info("%s received: finishing the current step, then saving", name)
        on_first(name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return received
