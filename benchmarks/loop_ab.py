"""Whole-loop A/B: several `python -m trainer run` arms side by side, one change each.

    python benchmarks/loop_ab.py --minutes 30 \
        --arm base= --arm mix=TRAINER_VALUE_TARGET_MIX=0.5 \
        --arm avg=TRAINER_AVERAGE_POSITIONS=true --arm small=TRAINER_CHANNELS=32,TRAINER_BLOCKS=3

Each arm is `NAME=` followed by comma-separated VAR=VALUE settings for the children (the
trainer reads TRAINER_*, the actors ACTOR_*, the launcher LAUNCHER_*). Every arm starts from
an empty folder at the same moment; arms are pinned round-robin to the machine's cores, so
each core runs the same number of arms and no arm gets more CPU than another (with 4 arms on
2 cores each has half a core: the comparison is fair between the arms, but a run of the real
loop of the same wall time goes about twice as far). After --minutes all arms are stopped
together and only then is each final `latest.onnx` played (raw greedy policy) against rollout
MCTS of each --opponents, the evaluations spread over the cores. Prints the score with its
95% interval per arm and opponent, with the trainer step each arm reached.

Run it on a quiet machine: anything else running takes CPU from some arms and not others.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from time_to_strength import evaluate_in_parallel, snapshot, start_loop, stop_loop  # noqa: E402


def parse_arm(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME=VAR=VALUE,... (or NAME= for none)")
    env: dict[str, str] = {}
    for item in filter(None, settings.split(",")):
        var, eq, value = item.partition("=")
        if not eq or not var.isidentifier():
            raise argparse.ArgumentTypeError(f"--arm {text!r}: {item!r} is not VAR=VALUE")
        env[var] = value
    return name, env


def pinned(cpus: set[int]):
    return lambda: os.sched_setaffinity(0, cpus)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arm", type=parse_arm, action="append", required=True, help="NAME=VAR=VALUE,...")
    p.add_argument("--minutes", type=float, default=30.0, help="Wall minutes every arm trains.")
    p.add_argument("--env-id", default="connect4")
    p.add_argument("--opponents", default="mcts:50,mcts:200", help="Comma list of evaluator opponents.")
    p.add_argument("--games", default="400,200", help="Games per opponent (comma list, same order).")
    p.add_argument("--work", type=Path, default=None, help="Folder for the arms' data and logs (kept).")
    p.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = p.parse_args()
    names = [name for name, _ in args.arm]
    if len(set(names)) != len(names):
        p.error(f"arm names must differ: {names}")
    opponents = [o for o in args.opponents.split(",") if o]
    games = [int(g) for g in args.games.split(",") if g]
    if len(games) != len(opponents):
        p.error("--games needs one count per --opponents entry")

    work = args.work or Path(tempfile.mkdtemp(prefix="loop_ab_"))
    work.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    print(f"{len(args.arm)} arms on cores {cpus} for {args.minutes:g} min, work: {work}", flush=True)
    procs = {}
    for i, (name, env) in enumerate(args.arm):
        data = work / name
        if data.exists():
            shutil.rmtree(data)
        proc = start_loop(
            args.env_id,
            data,
            ["--steps", "0"],
            work / f"{name}.log",
            env={**os.environ, **env},
            preexec_fn=pinned({cpus[i % len(cpus)]}),
        )
        procs[name] = proc
        print(f"  {name}: core {cpus[i % len(cpus)]}, {env or 'defaults'}", flush=True)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < args.minutes * 60:
            dead = [n for n, pr in procs.items() if pr.poll() is not None]
            if dead:
                raise RuntimeError(f"arm(s) {dead} exited early; see their logs in {work}")
            time.sleep(1.0)
        finals = {name: snapshot(work / name / "models", work / f"{name}.onnx") for name in names}
    finally:
        for proc in procs.values():  # one SIGINT to all at once (a second one skips the wait)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for name, proc in procs.items():
            try:
                code = proc.wait(90)
            except subprocess.TimeoutExpired:
                code = stop_loop(proc)
            print(f"  {name}: launcher exit code {code}", flush=True)

    jobs = [
        (name, opp, n)
        for name in names
        if finals[name] is not None
        for opp, n in zip(opponents, games, strict=True)
    ]
    results: dict[str, dict[str, dict]] = {name: {} for name in names}
    # Every arm meets each opponent with the same seed.
    done = evaluate_in_parallel(
        [(finals[name], args.env_id, opp, n, 1000 + opponents.index(opp)) for name, opp, n in jobs]
    )
    for (name, opp, _), r in zip(jobs, done, strict=True):
        results[name][opp] = r

    print(f"\n{args.env_id}, {args.minutes:g} min per arm, raw greedy policy, score (95% interval)")
    print(f"  {'arm':10s} {'step':>6s}" + "".join(f"{o:>24s}" for o in opponents))
    for name in names:
        row = results[name]
        step = next((r.get("model_step") for r in row.values()), None)
        cells = [
            f"{r['score']:.3f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f})" if (r := row.get(o)) else "no model"
            for o in opponents
        ]
        print(f"  {name:10s} {step!s:>6s}" + "".join(f"{c:>24s}" for c in cells))
    if args.json:
        args.json.write_text(
            json.dumps({"minutes": args.minutes, "arms": dict(args.arm), "results": results})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
