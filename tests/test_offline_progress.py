"""Readable progress of the offline modes: the bar carries the validation loss and the ETA, and
`--eval-opponent` scores the final model with the evaluator's match (stats.json `final_eval`);
the behaviour policy of generated data (`SPEC+epsilon:E`) is a player the evaluator scores."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from actor_support import REPO, actor_env
from test_offline_teacher import play_games, write_jsonl

from trainer.evaluator import evaluate_player
from trainer.games import get_game
from trainer.search.players import EpsilonPlayer, make_player

BAR = re.compile(
    r"^(?P<mode>\w+) \[[#-]{20}\]\s+(?P<pct>\d+)% (?P<step>\d+)/(?P<total>\d+) [\d.]+ it/s (?P<pairs>.*)$"
)


def bar_lines(stderr: str) -> list[dict[str, str]]:
    """Each progress line as {mode, step, total, NAME: VALUE...} (the pairs after the rate)."""
    out = []
    for line in stderr.splitlines():
        m = BAR.match(line)
        if m:
            words = m["pairs"].split()
            out.append(
                {
                    "mode": m["mode"],
                    "step": m["step"],
                    "total": m["total"],
                    **dict(zip(words[::2], words[1::2])),
                }
            )
    return out


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        env=actor_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("progress") / "teacher.jsonl", play_games(120, seed=5))


NET = ["--hidden", "32", "--layers", "1", "--threads", "1", "--log-level", "WARNING"]


@pytest.mark.parametrize(
    "mode,length",
    [
        ("bc", ["--epochs", "3"]),
        ("iql", ["--steps", "60", "--checkpoint-interval", "20", "--val-fraction", "0.2"]),
    ],
)
def test_bar_shows_validation_and_eta_and_the_run_ends_with_its_score(mode, length, data, tmp_path):
    out = _run(
        mode,
        "--data",
        str(data),
        "--model-dir",
        str(tmp_path / "models"),
        *NET,
        *length,
        "--eval-opponent",
        "random",
        "--eval-games",
        "12",
    )
    assert out.returncode == 0, out.stderr
    lines = bar_lines(out.stderr)
    assert len(lines) >= 5 and {ln["mode"] for ln in lines} == {mode}
    assert lines[-1]["step"] == lines[-1]["total"]
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", ln["ETA"]) for ln in lines)
    assert all(float(ln["loss"]) >= 0 for ln in lines)
    # `-` until the first validation, a number from then on
    vals = [ln["val_loss"] for ln in lines]
    measured = [v for v in vals if v != "-"]
    assert measured and vals[-len(measured) :] == measured and all(float(v) > 0 for v in measured)
    if mode == "bc":
        assert 0 <= float(lines[-1]["val_acc"]) <= 1

    stats = json.loads((tmp_path / "stats.json").read_text())
    final = stats["final_eval"]
    assert final["opponent"] == "random" and final["games_played"] == 12
    assert final["wins"] + final["draws"] + final["losses"] == 12
    assert final["score"] == pytest.approx((final["wins"] + final["draws"] / 2) / 12)
    assert final["ci"][0] <= final["score"] <= final["ci"][1]
    assert final["model_step"] == stats["step"] == int(lines[-1]["step"])
    assert f"Model score:       {final['score']:.3f}" in out.stdout  # the evaluator's own report


def test_no_validation_data_leaves_the_val_pairs_out_and_no_opponent_no_final_eval(data, tmp_path):
    out = _run("cql", "--data", str(data), "--model-dir", str(tmp_path / "models"), *NET, "--steps", "20")
    assert out.returncode == 0, out.stderr
    lines = bar_lines(out.stderr)
    assert lines and all("ETA" in ln and "val_loss" not in ln for ln in lines)
    assert "final_eval" not in json.loads((tmp_path / "stats.json").read_text())


def test_bad_eval_opponent_is_one_error_line(data, tmp_path):
    out = _run("iql", "--data", str(data), "--model-dir", str(tmp_path / "m"), "--eval-opponent", "mcts:0")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and "--eval-opponent" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


def test_epsilon_spec_wraps_the_teacher():
    game, rng = get_game("tictactoe"), np.random.default_rng(0)
    player = make_player("mcts:8+epsilon:0.25", game, rng)
    assert (
        isinstance(player, EpsilonPlayer) and player.epsilon == 0.25 and player.name == "mcts:8+epsilon:0.25"
    )
    for bad in ("mcts:8+epsilon:1.5", "mcts:8+epsilon:nan", "mcts:8+epsilon:", "nobody+epsilon:0.1"):
        with pytest.raises(ValueError):
            make_player(bad, game, rng)


def test_behaviour_policy_is_scored_like_a_model():
    # The perfect player never loses to random; at epsilon 1 it is random itself and loses games.
    exact = evaluate_player("perfect+epsilon:0", "tictactoe", "random", games=60, seed=1)
    noisy = evaluate_player("perfect+epsilon:1", "tictactoe", "random", games=60, seed=1)
    assert exact.model == "perfect+epsilon:0.0" and exact.opponent == "random" and exact.games_played == 60
    assert exact.losses == 0 and noisy.losses > 0 and noisy.score < exact.ci[0]


def test_evaluator_cli_plays_a_player_spec():
    cli = [sys.executable, "-m", "trainer.evaluator", "--env-id", "tictactoe", "--games", "10", "--seed", "0"]
    ok = subprocess.run(
        [*cli, "--player", "perfect+epsilon:0.1", "--json"],
        env=actor_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert (
        result["model"] == "perfect+epsilon:0.1"
        and result["games_played"] == 10
        and result["model_step"] is None
    )
    bad = subprocess.run(
        [*cli, "--player", "perfect+epsilon:2"],
        env=actor_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "--player" in bad.stderr


def test_player_needs_a_game_and_a_baseline_opponent():
    from pydantic import ValidationError

    from trainer.evaluator.__main__ import EvaluatorConfig

    assert EvaluatorConfig(player="mcts:5+epsilon:0.3", env_id="connect4").player == "mcts:5+epsilon:0.3"
    for bad in ({}, {"env_id": "connect4", "opponent": "model:other.onnx"}):
        with pytest.raises(ValidationError):
            EvaluatorConfig(player="mcts:5", **bad)
