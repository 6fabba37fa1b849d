"""Cost of the exporters on the daemon's steps/s, side by side in one run.

For each round, on the same cached replay DB and settings, the real daemon loop runs
  plain        - no exporter
  metrics      - --metrics-port, with a scraper fetching /metrics every --scrape-interval
                 seconds (1 s by default: 15 times Prometheus' usual rate, to make the
                 cost visible)
  metrics+tb   - the same plus --tensorboard
in turn (the order rotates every round, so drift on a shared machine hits each alike), and
prints steps/s per round, then the median of each variant and its ratio to plain.

    python benchmarks/metrics_bench.py [--env-id tictactoe] [--batch 64] [--steps 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from daemon_bench import _Clock, bench_config, build_db

from trainer.commands.train import build_daemon, exporter_hooks

VARIANTS = ("plain", "metrics", "metrics+tb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_until(port: int, interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            pass


def run(variant: str, env_id: str, batch: int, steps: int, db: Path, scrape_interval: float) -> float:
    work = Path(tempfile.mkdtemp(prefix="metrics_bench_"))
    stop = threading.Event()
    try:
        port = free_port() if variant != "plain" else 0
        cfg = bench_config(
            env_id,
            batch,
            steps,
            db,
            work,
            metrics_port=port,
            tensorboard=work / "tb" if variant == "metrics+tb" else None,
        )
        loop = build_daemon(cfg, exporter_hooks(cfg))
        clock = _Clock()
        loop.hooks.insert(0, clock)
        if port:
            threading.Thread(target=scrape_until, args=(port, scrape_interval, stop), daemon=True).start()
        loop.run()
        loop.source.close()
        return (clock.step_last - clock.step_first) / (clock.t_last - clock.t_first)
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env-id", default="tictactoe")
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scrape-interval", type=float, default=1.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    db = build_db(args.env_id, args.rows)
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            rate = run(variant, args.env_id, args.batch, args.steps, db, args.scrape_interval)
            rates[variant].append(rate)
            print(f"round {r + 1} {variant:11} {rate:8.1f} steps/s", flush=True)
    plain = statistics.median(rates["plain"])
    print(f"\n{args.env_id} batch {args.batch}, {args.steps} steps, median of {args.rounds} rounds:")
    for variant in VARIANTS:
        median = statistics.median(rates[variant])
        print(f"  {variant:11} {median:8.1f} steps/s  ratio {median / plain:5.3f}")


if __name__ == "__main__":
    main()
