"""The evaluator: match play, statistics, the Python API for the daemon, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from actor_support import REPO, actor_env, publish, tiny_model_bytes
from trainer.evaluator import EvalResult, evaluate_model, play_games, summarise, wilson_interval
from trainer.games import get_game
from trainer.onnx_policy import ModelContractError, OnnxPolicy
from trainer.search.players import PerfectPlayer, RandomPlayer


@pytest.fixture(scope="module")
def ttt_model(tmp_path_factory):
    return publish(tmp_path_factory.mktemp("models"), tiny_model_bytes("tictactoe", step=120))


def test_perfect_player_never_loses_to_random_and_wins_most():
    game = get_game("tictactoe")
    rng = np.random.default_rng(0)
    records = play_games(game, PerfectPlayer(game, rng), RandomPlayer(game, rng), games=100)
    r = summarise(records, "perfect", "random", "tictactoe", None)
    assert r.losses == 0
    assert r.win_rate > 0.75
    assert r.wins_as_first + r.draws_as_first + r.losses_as_first == 50  # colours alternate
    assert r.wins_as_first > r.wins_as_second  # moving first is an advantage
    assert r.ci[0] > 0.8 and r.ci[1] <= 1.0
    assert all(5 <= rec.length <= 9 for rec in records)


def test_eval_history_entry_matches_the_contract():
    game = get_game("tictactoe")
    rng = np.random.default_rng(1)
    r = summarise(play_games(game, RandomPlayer(game, rng), RandomPlayer(game, rng), 20), "m", "random", "tictactoe", 7)
    e = r.to_eval_history_entry(300)
    assert set(e) == {"step", "win_rate", "draw_rate", "loss_rate", "games_played", "avg_game_length", "timestamp"}
    assert type(e["step"]) is int and type(e["games_played"]) is int and e["games_played"] == 20
    assert abs(e["win_rate"] + e["draw_rate"] + e["loss_rate"] - 1) < 1e-9
    assert all(0 <= e[k] <= 1 for k in ("win_rate", "draw_rate", "loss_rate"))
    json.dumps(e, allow_nan=False)


def test_wilson_interval():
    lo, hi = wilson_interval(0.5, 100)
    assert lo < 0.5 < hi and abs((hi - lo) - 0.196) < 0.01
    assert wilson_interval(1.0, 10)[1] == 1.0 and wilson_interval(1.0, 10)[0] > 0.65
    assert wilson_interval(0.0, 0) == (0.0, 1.0)


def test_evaluate_model_api(ttt_model):
    r = evaluate_model(ttt_model, None, "perfect", games=6, seed=0)
    assert isinstance(r, EvalResult)
    assert r.env_id == "tictactoe" and r.model_step == 120  # both from the model's metadata
    assert r.games_played == 6 and r.wins == 0  # nobody beats perfect play
    r2 = evaluate_model(ttt_model, "tictactoe", "mcts:8", games=4, seed=1, sims=8, temperature=1.0)
    assert r2.games_played == 4 and r2.opponent == "mcts:8"


def test_shapes_from_the_replay_db(ttt_model, tmp_path):
    import sqlite3

    from trainer.replay.writer import ReplayWriter

    db = tmp_path / "replay.db"
    ReplayWriter(db, get_game("tictactoe")).close()
    assert evaluate_model(ttt_model, "tictactoe", "random", games=2, seed=0, db=db).games_played == 2
    conn = sqlite3.connect(db)
    conn.execute("UPDATE game_metadata SET obs_size = 30 WHERE env_id = 'tictactoe'")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="game_metadata"):
        evaluate_model(ttt_model, "tictactoe", "random", games=2, seed=0, db=db)


def test_evaluate_model_does_not_import_torch(ttt_model):
    code = (
        "import sys; from trainer.evaluator import evaluate_model; "
        f"r = evaluate_model({str(ttt_model)!r}, 'tictactoe', 'random', 4, 0); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(r.games_played)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=actor_env(), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "4", out.stderr


def test_contract_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelContractError, match="observation has 29 features, connect4 needs 93"):
        OnnxPolicy(publish(tmp_path, tiny_model_bytes("tictactoe"), "a.onnx"), spec=get_game("connect4").spec)
    with pytest.raises(ModelContractError, match="env_id 'tictactoe', expected 'connect4'"):
        OnnxPolicy(tmp_path / "a.onnx", expected_env_id="connect4")
    with pytest.raises(ModelContractError, match="cannot load"):
        OnnxPolicy(publish(tmp_path, b"junk", "b.onnx"))
    with pytest.raises(FileNotFoundError):
        OnnxPolicy(tmp_path / "missing.onnx")


def test_contract_error_on_renamed_outputs(tmp_path):
    import onnx

    proto = onnx.load_from_string(tiny_model_bytes("tictactoe"))
    for node in proto.graph.node:
        node.output[:] = ["logits" if o == "policy_logits" else o for o in node.output]
    proto.graph.output[0].name = "logits"
    path = publish(tmp_path, proto.SerializeToString(), "renamed.onnx")
    with pytest.raises(ModelContractError, match=r"outputs are \['logits', 'value'\]"):
        OnnxPolicy(path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.evaluator", *args], env=actor_env(), capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_cli_text_json_and_min_score(ttt_model):
    out = _cli("--model", str(ttt_model), "--games", "10", "--opponent", "perfect", "--seed", "3")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Evaluation Results: latest.onnx (step 120) vs perfect" in text
    for label in ("Games played:      10", "Model wins:", "perfect wins:", "Draws:", "Avg game length:", "95% CI", "Verdict:"):
        assert label in text, text
    out = _cli("--model", str(ttt_model), "--games", "10", "--opponent", "perfect", "--json", "--min-score", "0.9")
    assert out.returncode == 1  # nothing scores 0.9 against perfect play
    d = json.loads(out.stdout)
    assert d["games_played"] == 10 and d["wins"] == 0 and d["score"] < 0.9
    out = _cli("--model", str(ttt_model), "--games", "4", "--opponent", "bogus")
    assert out.returncode == 2 and "--opponent" in out.stderr
