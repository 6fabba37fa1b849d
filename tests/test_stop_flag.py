"""The stop flag every long-running program's signal handler sets (trainer/runtime.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from trainer.runtime import StopFlag

REPO = Path(__file__).resolve().parents[1]

# The main thread spends its time inside wait() while real signals arrive, the moment at
# which a threading.Event holds its own lock: an Event in its place hung here in most rounds.
SIGNALLED_WHILE_WAITING = """
    import os, signal, threading
    from trainer.runtime import StopFlag

    for _ in range(ROUNDS):
        flag = StopFlag()
        signal.signal(signal.SIGINT, lambda signum, frame, flag=flag: flag.set())
        threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT)).start()
        while not flag.wait(0):
            pass
    print("rounds done", flush=True)
"""


def test_a_signal_handler_sets_it_while_the_main_thread_waits_on_it():
    rounds = 30
    script = textwrap.dedent(SIGNALLED_WHILE_WAITING).replace("ROUNDS", str(rounds))
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("a signal handler setting the flag deadlocked the waiting main thread") from None
    assert done.returncode == 0 and done.stdout.strip() == "rounds done", done.stderr


def test_wait_returns_when_another_thread_sets_it_and_times_out_otherwise():
    flag = StopFlag()
    t0 = time.monotonic()
    assert flag.wait(0.15) is False and time.monotonic() - t0 >= 0.15
    assert not flag.is_set()

    threading.Timer(0.1, flag.set).start()
    t0 = time.monotonic()
    assert flag.wait(30) is True
    assert time.monotonic() - t0 < 5  # seen within a poll, not at the timeout
    assert flag.is_set() and flag.wait(0) is True and flag.wait() is True
