"""The learning gate: the one-command loop learns tic-tac-toe from nothing within a budget.

Runs `python -m trainer run --no-dashboard` (the real launcher, actor and daemon as
processes, the shipped defaults) on an empty folder, plays each newly published model with
the evaluator (raw greedy policy, as `python -m trainer.evaluator`), and passes once one
model both
  * loses no game of 200 against the random player, and
  * holds the perfect player to a draw in almost every game of 200: a score of at least
    GATE_PERFECT_SCORE, far above what random play scores against it (measured here too).
The run is then stopped with SIGTERM and must exit 0. It takes 12-25 s on 2 cores, so it is
in the default suite (CI); `pytest -m learning_gate` runs it alone. LEARNING_GATE_BUDGET_S
overrides the budget (seconds).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainer.evaluator import evaluate_model, play_games, summarise
from trainer.games import get_game
from trainer.search.players import PerfectPlayer, RandomPlayer

REPO = Path(__file__).resolve().parents[1]
# Typically passes after 20-25 s on 2 cores (defaults: 2 actors, publish every 100 steps);
# the budget leaves room for a slow or busy CI machine and stays under 4 minutes.
BUDGET_S = float(os.environ.get("LEARNING_GATE_BUDGET_S", "210"))
# How often to look for a new latest.onnx; each new one is played at once, so the gate passes
# within a check of the first model that can (a check is a second or so of games).
POLL_S = 0.5
GAMES = 200
# Against a perfect player the best possible score is 0.5 (all draws); 0.475 allows at most
# 10 losses in 200 games. Random play scores about 0.04 (measured below: this perfect player
# wins as quickly as it can, so random play rarely even draws).
GATE_PERFECT_SCORE = 0.475


def _clean_env() -> dict[str, str]:
    """The shipped defaults are under test: no TRAINER_*/ACTOR_* overrides from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINER_", "ACTOR_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _random_vs_perfect_score(games: int) -> float:
    game = get_game("tictactoe")
    rng = np.random.default_rng(7)
    records = play_games(game, RandomPlayer(game, rng), PerfectPlayer(game, rng), games)
    return summarise(records, "random", "perfect", "tictactoe", None).score


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.mark.learning_gate
@pytest.mark.parametrize("replay", ["sqlite", "postgres"])
def test_one_command_run_learns_tictactoe(tmp_path, request, replay):
    random_baseline = _random_vs_perfect_score(GAMES)
    assert random_baseline < 0.3, f"random play scored {random_baseline:.2f} against the perfect player"

    data, log_path = tmp_path / "data", tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trainer",
                "run",
                "--data",
                str(data),
                "--no-dashboard",
                *(["--db", request.getfixturevalue("pg_url")] if replay == "postgres" else []),
            ],
            cwd=REPO,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    t0 = time.monotonic()
    history: list[str] = []
    passed = None
    try:
        latest, seen = data / "models" / "latest.onnx", None
        while passed is None and time.monotonic() - t0 < BUDGET_S:
            time.sleep(POLL_S)
            # Exit 0 before we stop it: the trainer reached its default --steps; the last
            # model is still checked below.
            finished = proc.poll() is not None
            assert proc.returncode in (None, 0), f"launcher failed ({proc.returncode}):\n{_tail(log_path)}"
            if not latest.exists() or latest.stat().st_mtime_ns == seen:
                if finished:
                    break
                continue
            seen = latest.stat().st_mtime_ns
            model = tmp_path / "checked.onnx"
            shutil.copyfile(latest, model)  # latest.onnx may be replaced while we play
            vs_random = evaluate_model(model, "tictactoe", "random", GAMES, seed=len(history))
            line = (
                f"{time.monotonic() - t0:5.0f}s step {vs_random.model_step}: vs random W/D/L "
                f"{vs_random.wins}/{vs_random.draws}/{vs_random.losses}"
            )
            vs_perfect = None
            if vs_random.losses == 0:  # a model that loses to random cannot pass: spare the CPU
                vs_perfect = evaluate_model(model, "tictactoe", "perfect", GAMES, seed=len(history))
                line += (
                    f", vs perfect W/D/L {vs_perfect.wins}/{vs_perfect.draws}/{vs_perfect.losses}"
                    f" (score {vs_perfect.score:.3f})"
                )
            history.append(line)
            if vs_perfect is not None and vs_perfect.score >= GATE_PERFECT_SCORE:
                passed = (vs_random, vs_perfect)
            elif finished:
                history.append("the run finished (trainer reached its --steps) without passing")
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "hung after SIGTERM"
    elapsed = time.monotonic() - t0
    report = "\n".join(history) or "(no model was published)"
    print(
        f"random vs perfect score {random_baseline:.3f}; checks:\n{report}\nlearned-or-gave-up after {elapsed:.0f}s"
    )

    assert passed is not None, (
        f"no published model passed within {BUDGET_S:.0f}s (random vs perfect scores {random_baseline:.3f});"
        f" checks:\n{report}\nlast log lines:\n{_tail(log_path)}"
    )
    vs_random, vs_perfect = passed
    assert vs_random.model_step is not None and vs_random.games_played == GAMES
    assert vs_perfect.score >= random_baseline + 0.25
    assert code == 0, f"launcher exit after SIGTERM: {code}\n{_tail(log_path)}"
