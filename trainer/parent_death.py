"""Child processes that end with their parent (Linux's parent-death signal).

A supervisor killed with SIGKILL gets no chance to stop its children; without this they go
on writing into its data folder, and the next run there finds them still at it. The kernel
sends the signal when the parent *thread* that started the child ends, so a parent starts
its children from the thread that lives as long as it does (the main thread).

`python -m trainer.parent_death PARENT_PID PROGRAM [ARGS...]` sets the signal up and then
execs PROGRAM (the setting survives exec), so any program can be started this way without
`preexec_fn`, which is unsafe in a parent that runs threads. Elsewhere than on Linux
nothing is set up and the program runs as it would have.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(expected_parent: int, sig: int = signal.SIGTERM) -> bool:
    """Have `sig` sent to this process when its parent ends; False where that is unsupported.

    If the parent ended before the request took effect the signal will never come, so then
    it is sent at once: `expected_parent` is the pid the caller knows its parent by.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)
    return True


def wrap(argv: list[str], parent: int | None = None) -> list[str]:
    """`argv` started through this module, where the platform supports it."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    parent = os.getpid() if parent is None else parent
    return [sys.executable, "-m", "trainer.parent_death", str(parent), *argv]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m trainer.parent_death PARENT_PID PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    die_with_parent(int(argv[0]))
    try:
        os.execvp(argv[1], argv[1:])
    except OSError as exc:
        print(f"error: cannot start {argv[1]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
