"""Child processes that end with their parent (Linux's parent-death signal).

A supervisor killed with SIGKILL gets no chance to stop its children; without this they go
on writing into its data folder, and the next run there finds them still at it.

The kernel sends the parent-death signal when the parent *thread* ends, and again for every
thread of the dying parent the child is handed to on the way to init: one SIGTERM per
thread of the launcher (its numpy pulls in a BLAS thread pool). The trainer and the actor
read a second SIGTERM as "exit at once, drop what is in flight". So a program is not given
the signal directly: `python -m trainer.parent_death PARENT_PID PROGRAM [ARGS...]` runs
PROGRAM under a small watcher that takes the parent-death signal itself, sends PROGRAM
exactly one SIGTERM, forwards the SIGTERM/SIGINT it gets from its parent, and exits as
PROGRAM did (its code, or the same signal). Elsewhere than on Linux `wrap` leaves a command
as it is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# The watcher's own parent-death signal: distinct from the SIGTERM its parent sends to stop it.
PARENT_GONE = signal.SIGUSR1


def die_with_parent(expected_parent: int, sig: int = signal.SIGTERM) -> bool:
    """Have `sig` sent to this process when its parent ends; False where that is unsupported.

    The signal may come more than once (see the module docstring). If the parent ended
    before the request took effect it would never come, so then it is sent at once:
    `expected_parent` is the pid the caller knows its parent by.
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
    """`argv` run under the watcher, where the platform supports it."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    parent = os.getpid() if parent is None else parent
    return [sys.executable, "-m", "trainer.parent_death", str(parent), *argv]


def watch(parent: int, argv: list[str]) -> int:
    """Run `argv` until it exits; one SIGTERM to it when `parent` ends. Returns its exit code."""
    program: subprocess.Popen | None = None
    parent_gone = False

    def send(sig: int) -> None:
        if program is not None and program.returncode is None:
            try:
                os.kill(program.pid, sig)
            except ProcessLookupError:
                pass

    def on_parent_gone(signum: int, frame: object) -> None:
        nonlocal parent_gone
        if not parent_gone:
            parent_gone = True
            send(signal.SIGTERM)

    signal.signal(PARENT_GONE, on_parent_gone)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: send(signum))
    if not die_with_parent(parent, PARENT_GONE):
        os.execvp(argv[0], argv)  # nothing to watch for: be the program itself
    if parent_gone:
        return 1  # the parent ended before the program started: do not start it
    try:
        program = subprocess.Popen(argv)
    except OSError as exc:
        print(f"error: cannot start {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 127
    if parent_gone:  # ended while the program was starting
        send(signal.SIGTERM)
    code = program.wait()
    if code < 0:  # killed by a signal: the same end here, so the parent sees it as it was
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m trainer.parent_death PARENT_PID PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    return watch(int(argv[0]), argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
