"""Running the real daemon as a subprocess in tests: start it, watch stats.json, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A daemon that trains at once on a small replay and reports often.
DAEMON_FAST = [
    "--threads",
    "1",
    "--min-rows",
    "50",
    "--max-reuse",
    "0",
    "--stats-interval",
    "5",
    "--log-interval",
    "50",
]


def daemon_args(data: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--db",
        str(data / "replay.db"),
        "--model-dir",
        str(data / "models"),
        "--stats",
        str(data / "stats.json"),
        "--log-level",
        "INFO",
        *extra,
    ]


def start_daemon(data: Path, *extra: str, log_name: str = "daemon.log") -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    log = open(data / log_name, "ab")
    return subprocess.Popen(
        daemon_args(data, *extra), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def read_stats(data: Path) -> dict | None:
    try:
        return json.loads((data / "stats.json").read_text())
    except (OSError, ValueError):
        return None


def wait_for(
    predicate,
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    data: Path | None = None,
    log_name: str = "daemon.log",
):
    """predicate()'s first truthy value; fails early if `proc` exits, showing data/log_name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process exited ({proc.returncode}) while waiting for {what}\n{tail_log(data, log_name)}"
            )
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail_log(data, log_name)}")


def wait_for_step(data: Path, step: int, timeout: float, proc=None) -> dict:
    return wait_for(
        lambda: (s := read_stats(data)) and s.get("step", 0) >= step and s,
        timeout,
        f"step {step}",
        proc,
        data,
    )


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout)


def tail_log(data: Path | None, name: str = "daemon.log", lines: int = 40) -> str:
    if data is None or not (data / name).exists():
        return ""
    return "\n".join((data / name).read_text(errors="replace").splitlines()[-lines:])
