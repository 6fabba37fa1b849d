"""Data-parallel training on the CPU: what a second rank buys over a second thread.

On a static Connect Four replay (built once by daemon_bench, cached under benchmarks/.cache),
for the ResNet 64x4 and an MLP, the real daemon is run as a process three ways:
  1x1   one process, one torch thread            (the baseline)
  1x2   one process, two torch threads           (intra-op parallelism)
  2x1   two ranks under torchrun, one thread each (data parallelism, gloo)
and samples/s (global: every rank's batches) is measured from stats.json between a warm-up
step and a later one, so start-up is left out. Printed: samples/s of each, and the
ratios 2x1/1x1 and 2x1/1x2. Then the time from launching `torchrun --nproc-per-node 2` to
the first published model (latest.onnx), start-up included.

Figures are only meaningful on an otherwise idle machine with at least two cores.

    python benchmarks/ddp_bench.py [--steps 200] [--batch 256] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from daemon_bench import build_db  # noqa: E402

NETS = {
    "resnet64x4": ["--net", "resnet", "--channels", "64", "--blocks", "4"],
    "mlp": ["--net", "mlp"],
}
# The MLP steps far faster: more steps, so the timed span covers many stats.json writes.
STEPS_FACTOR = {"resnet64x4": 1, "mlp": 10}
LAYOUTS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # processes x threads


def daemon_command(procs: int, threads: int, work: Path, db: Path, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "trainer"]
    if procs > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(procs),
            "-m",
            "trainer",
        ]
    return [
        *launcher,
        "train",
        "--db",
        str(db),
        "--env-id",
        "connect4",
        "--model-dir",
        str(work / "models"),
        "--stats",
        str(work / "stats.json"),
        "--threads",
        str(threads),
        "--max-reuse",
        "0",
        "--min-rows",
        "256",
        "--eval-interval",
        "0",
        "--stats-interval",
        "5",
        "--log-level",
        "WARNING",
        "--fresh",
        *extra,
    ]


def environment(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(ROOT))


def read_stats(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_until(predicate, proc: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()) is not None:
            return value
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({proc.returncode}) before the benchmark was done")
        time.sleep(0.05)
    raise TimeoutError("the daemon took too long")


def samples_per_sec(net: str, procs: int, threads: int, db: Path, batch: int, steps: int) -> float:
    """Samples/s between the first stats.json past a warm-up and the first past 80% of the
    run, by the file's own timestamps (the final write comes after the last save)."""
    steps *= STEPS_FACTOR[net]
    warmup = max(5, steps // 10)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cmd = daemon_command(
            procs, threads, work, db, *NETS[net], "--batch-size", str(batch), "--steps", str(steps)
        )
        cmd += ["--checkpoint-interval", str(10 * steps)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environment(threads), stdout=subprocess.DEVNULL)
        try:

            def mark(step: int):
                s = read_stats(work / "stats.json")
                if s and s["step"] >= step:
                    return s["timestamp"], s["samples_seen"]
                return None

            t0, samples0 = wait_until(lambda: mark(warmup), proc, 600)
            t1, samples1 = wait_until(lambda: mark(max(warmup + 1, steps * 4 // 5)), proc, 1800)
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return (samples1 - samples0) / max(1e-9, t1 - t0)


def time_to_first_model(db: Path, batch: int, interval: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cmd = daemon_command(2, 1, work, db, *NETS["resnet64x4"], "--batch-size", str(batch))
        cmd += ["--steps", str(interval), "--checkpoint-interval", str(interval)]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environment(1), stdout=subprocess.DEVNULL)
        try:
            wait_until(lambda: True if (work / "models" / "latest.onnx").exists() else None, proc, 900)
            elapsed = time.monotonic() - t0
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return elapsed


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps of each timed run")
    parser.add_argument("--batch", type=int, default=256, help="batch per rank")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the static Connect Four replay")
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run: 30 steps, batch 64, 20k rows"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch, args.rows = 30, 64, 20_000
    db = build_db("connect4", args.rows)
    print(
        f"Connect Four, {args.rows} rows, batch {args.batch} per rank, {args.steps} steps per run "
        f"({STEPS_FACTOR['mlp']}x that for the MLP)"
    )
    print(f"{'net':<12} {'1x1':>9} {'1x2':>9} {'2x1':>9} {'2x1/1x1':>8} {'2x1/1x2':>8}  (samples/s)")
    for net in NETS:
        rate = {
            name: samples_per_sec(net, procs, threads, db, args.batch, args.steps)
            for name, (procs, threads) in LAYOUTS.items()
        }
        print(
            f"{net:<12} {rate['1x1']:>9.0f} {rate['1x2']:>9.0f} {rate['2x1']:>9.0f} "
            f"{ratio(rate['2x1'], rate['1x1']):>8} {ratio(rate['2x1'], rate['1x2']):>8}",
            flush=True,
        )
    first = time_to_first_model(db, args.batch, interval=20 if args.quick else 100)
    print(f"launch to first published model, 2 ranks, ResNet 64x4: {first:.1f}s")


if __name__ == "__main__":
    main()
