"""Time to strength: how long the one-command loop takes, from an empty folder, to play well.

    python benchmarks/time_to_strength.py                      # both games, full length
    python benchmarks/time_to_strength.py --games tictactoe    # tic-tac-toe only (about a minute)
    python benchmarks/time_to_strength.py --games connect4 --c4-minutes 5,10 --c4-games 20

Tic-tac-toe: starts `python -m trainer run --no-dashboard` on an empty folder and every
--check-interval seconds plays the newest published model (raw greedy policy, the
evaluator's default) --ttt-games games against random and against the perfect player.
Reports the minutes until (a) no loss against random and (b) a draw against the perfect
player in every game, then stops the run (or at --ttt-budget minutes).

Connect Four: runs the loop (with `--steps 0`, i.e. until stopped, unless `--steps` is
passed after `--`) for the largest of --c4-minutes, copying `latest.onnx` aside at each
mark, stops it, and only then plays each copy against rollout MCTS of --c4-opponents
simulations (so evaluation never takes CPU from training; the rollout opponents are slow),
one evaluator process per core.

Minutes count from the launcher's start, model loading and the first random-play games
included: that is what a user waits. Extra launcher flags go after `--`, e.g.
`-- --actors 2`. Prints each Connect Four cell as its evaluation finishes and a table at the
end; `--json FILE` writes the numbers, rewritten after each cell so that a run cut short
keeps the cells it finished.

Figures behind the launcher's tic-tac-toe defaults (2-core machine):
  - --max-reuse 16 vs the daemon's 4: perfect greedy policy after 0.68 min at 16 (every later
    model kept passing), 1.26-1.76 min at 4; at 4 the trainer waited for data 91-96% of the time.
  - --actors 2 vs 1: beside one actor the trainer waited for data 91% of the time; two actors
    ran at ~385 plies/s each (vs ~400 alone) and halved the time to a perfect greedy policy
    (0.34 min vs 0.68 min).
  - --threads 1 vs 2 on Connect Four (2 actors + trainer, 150 s each): step 262 on 17.0k rows
    with 1 thread per process, step 167 on 10.9k rows with 2.
  - --checkpoint-interval 100 vs 200: the first model came out after ~15 s instead of ~45 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.atomic_files import atomic_write_json  # noqa: E402
from trainer.evaluator import evaluate_model  # noqa: E402
from trainer.model.contract import LATEST_MODEL_NAME  # noqa: E402


@dataclass
class Check:
    minute: float
    step: int | None
    random: tuple[int, int, int]  # wins, draws, losses
    perfect: tuple[int, int, int]


@dataclass
class TttResult:
    checks: list[Check] = field(default_factory=list)
    no_loss_vs_random: float | None = None  # minutes
    all_draws_vs_perfect: float | None = None
    both: float | None = None
    budget_min: float = 0.0


def start_loop(
    env_id: str, data: Path, extra: list[str], log_path: Path, env=None, preexec_fn=None
) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "trainer",
        "run",
        "--env-id",
        env_id,
        "--data",
        str(data),
        "--no-dashboard",
        *extra,
    ]
    log = open(log_path, "wb")
    return subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        preexec_fn=preexec_fn,
    )


def stop_loop(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wdl(r) -> tuple[int, int, int]:
    return (r.wins, r.draws, r.losses)


def snapshot(models: Path, dest: Path) -> Path | None:
    """Copy latest.onnx (replaced atomically by the trainer, so a copy is never torn)."""
    src = models / LATEST_MODEL_NAME
    if not src.exists():
        return None
    shutil.copyfile(src, dest)
    return dest


def run_tictactoe(args, work: Path) -> TttResult:
    data = work / "tictactoe"
    proc = start_loop("tictactoe", data, args.launcher_args, work / "tictactoe.log")
    t0 = time.monotonic()
    res = TttResult(budget_min=args.ttt_budget)
    last_mtime = 0.0
    try:
        while (now := time.monotonic() - t0) < args.ttt_budget * 60:
            if proc.poll() is not None:
                why = "the trainer reached --steps" if proc.returncode == 0 else f"exit {proc.returncode}"
                print(f"  the run ended ({why}); see {work / 'tictactoe.log'}")
                break
            time.sleep(max(0.0, args.check_interval - (time.monotonic() - t0 - now)))
            latest = data / "models" / LATEST_MODEL_NAME
            if not latest.exists() or latest.stat().st_mtime == last_mtime:
                continue
            last_mtime = latest.stat().st_mtime
            model = snapshot(data / "models", work / "ttt_check.onnx")
            minute = (time.monotonic() - t0) / 60  # the model existed by now
            vs_random = evaluate_model(model, "tictactoe", "random", args.ttt_games, seed=len(res.checks))
            vs_perfect = evaluate_model(model, "tictactoe", "perfect", args.ttt_games, seed=len(res.checks))
            check = Check(minute, vs_random.model_step, wdl(vs_random), wdl(vs_perfect))
            res.checks.append(check)
            print(
                f"  {minute:5.2f} min  step {check.step}: vs random W/D/L {check.random}, "
                f"vs perfect W/D/L {check.perfect}",
                flush=True,
            )
            if res.no_loss_vs_random is None and vs_random.losses == 0:
                res.no_loss_vs_random = minute
            if res.all_draws_vs_perfect is None and vs_perfect.draws == vs_perfect.games_played:
                res.all_draws_vs_perfect = minute
            if vs_random.losses == 0 and vs_perfect.draws == vs_perfect.games_played:
                res.both = res.both if res.both is not None else minute
                if not args.keep_going:
                    break
    finally:
        code = stop_loop(proc)
        print(f"  launcher exit code after SIGTERM: {code}")
    return res


def run_connect4(args, work: Path, save: Callable[[dict], None]) -> None:
    """Hands `save` the score table by mark and opponent after each evaluation, so that an
    evaluation stage cut short (they take many minutes each) keeps the cells it finished."""
    data = work / "connect4"
    marks = sorted(args.c4_minutes)
    # The daemon's default --steps (5000) can end a Connect Four run before the last mark;
    # run until stopped unless the caller chose a length.
    extra = args.launcher_args if "--steps" in args.launcher_args else [*args.launcher_args, "--steps", "0"]
    proc = start_loop("connect4", data, extra, work / "connect4.log")
    t0 = time.monotonic()
    copies: dict[float, Path | None] = {}
    try:
        for mark in marks:
            while time.monotonic() - t0 < mark * 60:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"launcher exited early with {proc.returncode}; see {work / 'connect4.log'}"
                    )
                time.sleep(1.0)
            copies[mark] = snapshot(data / "models", work / f"c4_{mark:g}min.onnx")
            print(
                f"  {mark:g} min: {'snapshot taken' if copies[mark] else 'no model published yet'}",
                flush=True,
            )
    finally:
        print(f"  launcher exit code after SIGTERM: {stop_loop(proc)}")
    # The loop has stopped: play the copies on every core at once (one evaluator per core),
    # the strongest opponents first so that the cores finish together.
    jobs = [
        (mark, sims)
        for sims in sorted(args.c4_opponents, reverse=True)
        for mark, model in copies.items()
        if model is not None
    ]
    table: dict[float, dict[str, tuple[int, int, int] | None]] = {
        mark: {f"mcts:{sims}": None for sims in args.c4_opponents} for mark in copies
    }
    save(table)

    def record(i: int, r: dict) -> None:
        mark, sims = jobs[i]
        table[mark][f"mcts:{sims}"] = (r["wins"], r["draws"], r["losses"])
        print(
            f"  {mark:g} min (step {r['model_step']}) vs mcts:{sims}: W/D/L {table[mark][f'mcts:{sims}']} "
            f"score {r['score']:.3f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f}, {r['elapsed_s']:.0f} s)",
            flush=True,
        )
        save(table)

    evaluate_in_parallel(
        [(copies[mark], "connect4", f"mcts:{sims}", args.c4_games, sims) for mark, sims in jobs],
        on_result=record,
    )


def evaluate_in_child(model: Path, env_id: str, opponent: str, games: int, seed: int) -> dict:
    """`python -m trainer.evaluator --json` in its own process, so that several run at once
    without sharing an interpreter lock."""
    argv = [sys.executable, "-m", "trainer.evaluator", "--model", str(model), "--env-id", env_id]
    argv += ["--opponent", opponent, "--games", str(games), "--seed", str(seed), "--json"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"evaluator exited {done.returncode} on {model} vs {opponent}: {done.stderr[-2000:]}"
        )
    return json.loads(done.stdout)


def evaluate_in_parallel(
    jobs: list[tuple[Path, str, str, int, int]], on_result: Callable[[int, dict], None] | None = None
) -> list[dict]:
    """`evaluate_in_child(*job)` for every job, one at a time per core; results in job order.
    `on_result(i, result)` runs as job i finishes, in the order they finish."""
    results: list[dict] = [{} for _ in jobs]
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        running = {pool.submit(evaluate_in_child, *job): i for i, job in enumerate(jobs)}
        for future in as_completed(running):
            i = running[future]
            results[i] = future.result()
            if on_result is not None:
                on_result(i, results[i])
    return results


def save_connect4(table: dict, out: dict, path: Path | None) -> None:
    """Put the Connect Four table (as far as it goes) into `out`, and write `out` to `path`."""
    out["connect4"] = {f"{m:g}": v for m, v in table.items()}
    if path is not None:
        atomic_write_json(path, out)


def fmt_min(m: float | None, budget: float) -> str:
    return f"{m:.2f}" if m is not None else f"> {budget:g} (not reached)"


def score(w: tuple[int, int, int] | None) -> str:
    if w is None:
        return "no model"
    n = sum(w)
    return f"{(w[0] + 0.5 * w[1]) / n:.2f} ({w[0]}/{w[1]}/{w[2]})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games", default="tictactoe,connect4", help="Comma list of tictactoe, connect4.")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="Folder for the runs' data and logs (default: a temp folder, removed).",
    )
    p.add_argument(
        "--ttt-budget", type=float, default=10.0, help="Minutes before the tic-tac-toe run gives up."
    )
    p.add_argument("--ttt-games", type=int, default=200, help="Games per check and opponent.")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="Keep checking until --ttt-budget after success (shows whether later models stay strong).",
    )
    p.add_argument(
        "--check-interval", type=float, default=15.0, help="Seconds between checks of the newest model."
    )
    p.add_argument(
        "--c4-minutes", default="30,60", help="Comma list of minutes at which Connect Four is scored."
    )
    p.add_argument("--c4-games", type=int, default=100, help="Games per Connect Four opponent.")
    p.add_argument("--c4-opponents", default="50,200,1000", help="Rollout MCTS simulations of the opponents.")
    p.add_argument("--json", type=Path, default=None, help="Also write the numbers to this file.")
    p.add_argument("launcher_args", nargs="*", help="Extra `python -m trainer run` flags (after --).")
    args = p.parse_args()
    args.c4_minutes = [float(x) for x in args.c4_minutes.split(",") if x]
    args.c4_opponents = [int(x) for x in args.c4_opponents.split(",") if x]
    games = [g.strip() for g in args.games.split(",") if g.strip()]

    work = args.work or Path(tempfile.mkdtemp(prefix="time_to_strength_"))
    if args.work and any(args.work.iterdir() if args.work.exists() else ()):
        p.error(f"{args.work} is not empty: the benchmark measures from an empty folder")
    work.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}, launcher extra flags: {args.launcher_args or 'none'}, work: {work}")
    out: dict = {}
    try:
        if "tictactoe" in games:
            print("tic-tac-toe:")
            ttt = run_tictactoe(args, work)
            out["tictactoe"] = {
                "no_loss_vs_random_min": ttt.no_loss_vs_random,
                "all_draws_vs_perfect_min": ttt.all_draws_vs_perfect,
                "both_min": ttt.both,
                "budget_min": ttt.budget_min,
                "checks": [c.__dict__ for c in ttt.checks],
            }
        if "connect4" in games:
            print("connect four:")
            run_connect4(args, work, save=lambda table: save_connect4(table, out, args.json))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    if "tictactoe" in out:
        t = out["tictactoe"]
        n = args.ttt_games
        print(f"Tic-tac-toe, minutes from an empty folder (raw greedy policy, {n} games per check)")
        print(f"  {'no loss vs random':34s} {fmt_min(t['no_loss_vs_random_min'], t['budget_min'])}")
        print(f"  {'all draws vs perfect':34s} {fmt_min(t['all_draws_vs_perfect_min'], t['budget_min'])}")
        print(f"  {'both in the same model':34s} {fmt_min(t['both_min'], t['budget_min'])}")
    if "connect4" in out:
        c4 = out["connect4"]
        opps = [f"mcts:{s}" for s in args.c4_opponents]
        print(f"Connect Four, score (W/D/L) of the raw greedy policy, {args.c4_games} games per cell")
        print("  " + f"{'minutes':>8s}" + "".join(f"{o:>20s}" for o in opps))
        for m, row in c4.items():
            print("  " + f"{m:>8s}" + "".join(f"{score(row[o]):>20s}" for o in opps))
    if args.json:
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
