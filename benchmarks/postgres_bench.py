"""The PostgreSQL replay against SQLite, on a throwaway local server (tests/pg_server.py).

Prints, for Connect Four games of uniformly random moves:
  ingest     games/s and rows/s written by 1, 4 and 16 concurrent writer processes (the
             Python actor's writer, `PgReplayWriter`, one game per transaction), each into a
             fresh database; the games are played before the clock starts
  daemon     steps/s and samples/s of the real daemon loop (benchmarks/daemon_bench.py)
             reading the same rows from PostgreSQL and from SQLite, and their ratio
  freshness  while 4 writers stream, the time from a game's commit to its last row being
             read into the replay source's window (default poll interval), p50 / p99
  memory     resident memory of a daemon process (stats.json `rss_mb`) on a table of --rows
             rows and on the same table copied to 10x the rows, with the same fixed window:
             it should follow the window, not the table

    python benchmarks/postgres_bench.py [--seconds 20] [--rows 50000] [--steps 1500] [--resnet]
    python benchmarks/postgres_bench.py --only memory --rows 200000

Needs the PostgreSQL server binaries (`apt-get install postgresql`); as root they run as the
`postgres` user. Run it on a quiet machine: the writers, the server and the daemon share it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from daemon_bench import daemon  # noqa: E402
from pg_server import PgServer  # noqa: E402
from replay_data import play_game, random_move  # noqa: E402

from trainer.config import DaemonConfig  # noqa: E402
from trainer.games import get_game  # noqa: E402
from trainer.replay.postgres.writer import PgReplayWriter  # noqa: E402
from trainer.replay.writer import ReplayWriter  # noqa: E402
from trainer.sources.replay_source import ReplaySource  # noqa: E402

ENV_ID = "connect4"
GAMES_PER_WRITER = 64  # played up front and written again under new episode ids


def _write_for(url: str, seconds: float, seed: int, prefix: str, start, out) -> None:
    """A writer process: its games ready, it waits for `start`, then writes for `seconds`."""
    game, rng = get_game(ENV_ID), np.random.default_rng(seed)
    games = [play_game(game, random_move, rng) for _ in range(GAMES_PER_WRITER)]
    commits: list[tuple[str, float]] = []
    n = rows = 0
    with PgReplayWriter(url, game) as writer:
        out.put("ready")
        start.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            episode = f"{prefix}-{n}"
            rows += writer.write_game(episode, games[n % len(games)])
            commits.append((episode, time.time()))
            n += 1
    out.put((n, rows, commits))


def run_writers(url: str, writers: int, seconds: float, tag: str) -> tuple[int, int, list, float]:
    """(games, rows, [(episode, commit time)], seconds) of `writers` processes writing at once."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_write_for, args=(url, seconds, i, f"{tag}{i}", start, out))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # imported, games played, connected
        assert out.get(timeout=600) == "ready"
    t0 = time.monotonic()
    start.set()
    results = [out.get() for _ in procs]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join()
    games = sum(r[0] for r in results)
    rows = sum(r[1] for r in results)
    return games, rows, [c for r in results for c in r[2]], elapsed


def bench_ingest(server: PgServer, seconds: float, counts: list[int]) -> None:
    print("ingest: Connect Four games, one transaction each")
    print(f"{'writers':>7} {'games/s':>9} {'rows/s':>9} {'vs 1 writer':>11}", flush=True)
    base = None
    for writers in counts:
        games, rows, _, elapsed = run_writers(server.create_database(), writers, seconds, "w")
        rate = games / elapsed
        base = base or rate
        print(f"{writers:7d} {rate:9.1f} {rows / elapsed:9.0f} {rate / base:11.2f}", flush=True)


def fill_both(url: str, sqlite_path: Path, rows: int) -> int:
    """The same random Connect Four games into both replays; rows written to each."""
    game, rng = get_game(ENV_ID), np.random.default_rng(0)
    written = 0
    with PgReplayWriter(url, game) as pg, ReplayWriter(sqlite_path, game) as lite:
        i = 0
        while written < rows:
            plies = play_game(game, random_move, rng)
            written += pg.write_game(f"g{i}", plies)
            lite.write_game(f"g{i}", plies)
            i += 1
    return written


def bench_daemon(server: PgServer, rows: int, steps: int, nets: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="postgres_bench_"))
    url, lite = server.create_database(), work / "replay.db"
    t0 = time.monotonic()
    n = fill_both(url, lite, rows)
    print(f"\n{n} Connect Four rows in each replay ({time.monotonic() - t0:.0f}s)", flush=True)
    print(f"{'net':7} {'batch':>5} {'sqlite st/s':>11} {'pg st/s':>8} {'pg samples/s':>12} {'pg/sqlite':>9}")
    for net in nets:
        n_steps = steps if net == "mlp" else max(60, steps // 20)
        for batch in (64, 256):
            sqlite_rate, _ = daemon(ENV_ID, net, batch, n_steps, lite)
            pg_rate, _ = daemon(ENV_ID, net, batch, n_steps, url)  # type: ignore[arg-type]
            print(
                f"{net:7} {batch:5d} {sqlite_rate:11.1f} {pg_rate:8.1f} {pg_rate * batch:12.0f} "
                f"{pg_rate / sqlite_rate:9.2f}",
                flush=True,
            )


def bench_freshness(server: PgServer, seconds: float) -> None:
    """Commit-to-window latency of games streamed by 4 writers into a source that is training."""
    url = server.create_database()
    PgReplayWriter(url, get_game(ENV_ID)).close()  # the schema, so that the source starts at once
    cfg = DaemonConfig(db=url, env_id=ENV_ID, batch_size=64, min_rows=1, max_reuse=0, seed=0)
    src = ReplaySource(cfg)
    arrivals: list[tuple[float, np.ndarray]] = []
    read_new = src._reader.read_new

    def timed_read_new(*args, **kw):
        # Into the window right after this returns (ReplaySource._ingest).
        rows = read_new(*args, **kw)
        if len(rows.rowids):
            arrivals.append((time.time(), np.asarray(rows.rowids)))
        return rows

    src._reader.read_new = timed_read_new  # type: ignore[method-assign]
    stop = threading.Event()

    def train() -> None:
        while not stop.is_set():
            if src.next_batch() is None:
                time.sleep(0.005)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    try:
        _, rows, commits, _ = run_writers(url, 4, seconds, "f")
        time.sleep(2 * cfg.poll_interval + 1.0)
    finally:
        stop.set()
        trainer.join(10)
        src.close()
    import psycopg

    with psycopg.connect(url) as conn:
        last_seq = dict(
            conn.execute("SELECT episode_id, max(seq) FROM transitions GROUP BY episode_id").fetchall()
        )
    seen_at = {int(s): t for t, seqs in arrivals for s in seqs}
    lags = [seen_at[last_seq[ep]] - t for ep, t in commits if last_seq.get(ep) in seen_at]
    if not lags:
        print("\nfreshness: no game reached the window", flush=True)
        return
    p50, p99 = np.percentile(lags, [50, 99])
    print(
        f"\nfreshness, 4 writers ({len(commits)} games, {rows} rows in {seconds:.0f}s, "
        f"poll interval {cfg.poll_interval}s): commit -> window p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms ({len(lags)} games measured)",
        flush=True,
    )


def daemon_rss_mb(url: str, work: Path, window: int) -> float:
    """A fresh daemon process trains 200 steps from the replay; its resident memory at the stop."""
    import json
    import subprocess

    run = work / f"run-{time.monotonic_ns()}"
    args = ["--env-id", ENV_ID, "--steps", "200", "--window", str(window), "--threads", "1"]
    args += [
        "--checkpoint-dir",
        str(run / "ckpt"),
        "--model-dir",
        str(run / "models"),
        "--stats",
        str(run / "stats.json"),
    ]
    args += ["--eval-interval", "0", "--max-reuse", "0", "--log-level", "WARNING"]
    env = {"TRAINER_DB": url, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, env=env, check=True, timeout=1800)
    return float(json.loads((run / "stats.json").read_text())["rss_mb"])


def bench_memory(server: PgServer, rows: int, window: int = 50_000) -> None:
    work = Path(tempfile.mkdtemp(prefix="postgres_bench_"))
    url = server.create_database()
    game, rng = get_game(ENV_ID), np.random.default_rng(0)
    written, i = 0, 0
    with PgReplayWriter(url, game) as pg:
        while written < rows:
            written += pg.write_game(f"g{i}", play_game(game, random_move, rng))
            i += 1
    small = daemon_rss_mb(url, work, window)
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'transitions' "
                "AND column_name NOT IN ('id', 'episode_id', 'seq', 'created_at') ORDER BY ordinal_position"
            )
        ]
        names = ", ".join(cols)
        conn.execute(
            f"INSERT INTO transitions (id, episode_id, {names}) SELECT id || '-c' || g, episode_id || '-c' || g, "
            f"{names} FROM transitions, generate_series(1, 9) AS g"
        )
        (total,) = conn.execute("SELECT count(*) FROM transitions").fetchone()
    big = daemon_rss_mb(url, work, window)
    print(
        f"\nmemory, window {window} rows: {written} rows -> {small:.0f} MB; {total} rows -> {big:.0f} MB "
        f"(ratio {big / small:.2f})",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="writing time of each ingest case")
    ap.add_argument("--writers", default="1,4,16", help="writer process counts of the ingest cases")
    ap.add_argument("--rows", type=int, default=50_000, help="rows of the daemon comparison's replays")
    ap.add_argument("--steps", type=int, default=1500, help="daemon steps per MLP case")
    ap.add_argument("--resnet", action="store_true", help="also the Connect Four ResNet")
    ap.add_argument("--only", choices=["ingest", "daemon", "freshness", "memory"], help="run one part")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    server = PgServer.start()
    try:
        if args.only in (None, "ingest"):
            bench_ingest(server, args.seconds, [int(x) for x in args.writers.split(",")])
        if args.only in (None, "daemon"):
            bench_daemon(server, args.rows, args.steps, ["mlp", "resnet"] if args.resnet else ["mlp"])
        if args.only in (None, "freshness"):
            bench_freshness(server, args.seconds)
        if args.only == "memory":  # builds a 10x table: minutes, so only when asked
            bench_memory(server, args.rows)
    finally:
        server.stop()
        server.cleanup()


if __name__ == "__main__":
    main()
