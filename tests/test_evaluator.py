"""The evaluator: match play, statistics, the Python API for the daemon, and the CLI; a model is
refused as docs/contract.md section 3 ("Actor reload rules") says."""

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
    """docs/contract.md section 4, `eval_history`."""
    game = get_game("tictactoe")
    rng = np.random.default_rng(1)
    r = summarise(
        play_games(game, RandomPlayer(game, rng), RandomPlayer(game, rng), 20), "m", "random", "tictactoe", 7
    )
    e = r.to_eval_history_entry(300)
    assert set(e) == {
        "step",
        "win_rate",
        "draw_rate",
        "loss_rate",
        "games_played",
        "avg_game_length",
        "timestamp",
    }
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

    # '?' and '#' would end the path part of a hand-built "file:...?mode=ro" URI.
    (tmp_path / "runs?v=1#a").mkdir()
    db = tmp_path / "runs?v=1#a" / "replay.db"
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
    out = subprocess.run(
        [sys.executable, "-c", code], env=actor_env(), capture_output=True, text=True, cwd=REPO, timeout=60
    )
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
        [sys.executable, "-m", "trainer.evaluator", *args],
        env=actor_env(),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_cli_text_json_and_min_score(ttt_model):
    out = _cli("--model", str(ttt_model), "--games", "10", "--opponent", "perfect", "--seed", "3")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Evaluation Results: latest.onnx (step 120) vs perfect" in text
    for label in (
        "Games played:      10",
        "Model wins:",
        "perfect wins:",
        "Draws:",
        "Avg game length:",
        "95% CI",
        "Verdict:",
    ):
        assert label in text, text
    out = _cli(
        "--model", str(ttt_model), "--games", "10", "--opponent", "perfect", "--json", "--min-score", "0.9"
    )
    assert out.returncode == 1  # nothing scores 0.9 against perfect play
    d = json.loads(out.stdout)
    assert d["games_played"] == 10 and d["wins"] == 0 and d["score"] < 0.9
    out = _cli("--model", str(ttt_model), "--games", "4", "--opponent", "bogus")
    assert out.returncode == 2 and "--opponent" in out.stderr


def test_cli_json_with_verbose_keeps_stdout_one_json_object(ttt_model):
    out = _cli(
        "--model",
        str(ttt_model),
        "--games",
        "3",
        "--opponent",
        "random",
        "--seed",
        "0",
        "--json",
        "--verbose",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["games_played"] == 3
    assert "game 1: model first" in out.stderr and "game 3:" in out.stderr  # the game log still appears
    out = _cli("--model", str(ttt_model), "--games", "1", "--opponent", "random", "--seed", "0", "--verbose")
    assert out.returncode == 0 and "game 1: model first" in out.stdout  # text mode keeps it on stdout


def _first_model_moves(model, temperature: float, seeds) -> list[int]:
    """The model's opening move in every game it starts (all from the empty board)."""
    moves = []
    for seed in seeds:
        records: list = []
        evaluate_model(
            model,
            "tictactoe",
            "random",
            games=4,
            seed=seed,
            sims=16,
            temperature=temperature,
            records_out=records,
        )
        moves += [r.moves[0] for r in records if r.model_first]
    return moves


def test_temperature_applies_to_search_moves(tmp_path):
    from trainer.search.mcts import MCTSConfig, ObsEvaluator, search

    # The hand-built model's priors are peaked enough for one most-visited opening move;
    # the tiny torch model's are nearly uniform, which leaves ties that greedy play breaks
    # at random.
    model = publish(tmp_path, _graph_model(), "peaked.onnx")
    game = get_game("tictactoe")
    policy = OnnxPolicy(model, spec=game.spec)
    (root,) = search(
        game,
        [game.initial_state()],
        ObsEvaluator(policy.evaluate),
        MCTSConfig(sims=16, c_puct=1.5),
        np.random.default_rng(0),
        add_noise=False,
    )
    most_visited = np.flatnonzero(root.visits == root.visits.max())
    assert len(most_visited) == 1 and root.visits.max() < 16, root.visits
    assert set(_first_model_moves(model, 0.0, range(8))) == {int(most_visited[0])}
    sampled = _first_model_moves(model, 1.0, range(8))
    assert len(set(sampled)) > 1, sampled
    assert set(sampled) <= set(np.flatnonzero(root.visits).tolist())  # only searched moves
    assert _first_model_moves(model, 1.0, range(8)) == sampled  # still reproducible per seed


def _graph_model(input_name="observation", batch="batch", features=29, weight_rows=29, value_dim=1) -> bytes:
    """A linear policy-value model written with onnx.helper, so one defect at a time can be
    put into an otherwise valid graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w_pol = numpy_helper.from_array(rng.standard_normal((weight_rows, 9)).astype(np.float32), "w_pol")
    w_val = numpy_helper.from_array(rng.standard_normal((weight_rows, value_dim)).astype(np.float32), "w_val")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "w_pol"], ["policy_logits"]),
            helper.make_node("MatMul", [input_name, "w_val"], ["v"]),
            helper.make_node("Tanh", ["v"], ["value"]),
        ],
        "bad",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, features])],
        [
            helper.make_tensor_value_info("policy_logits", TensorProto.FLOAT, [batch, 9]),
            helper.make_tensor_value_info("value", TensorProto.FLOAT, [batch, value_dim]),
        ],
        initializer=[w_pol, w_val],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.add(key="env_id", value="tictactoe")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_cli_accepts_the_hand_built_model_when_it_keeps_the_contract(tmp_path):
    path = publish(tmp_path, _graph_model(), "good.onnx")
    out = _cli("--model", str(path), "--games", "2", "--seed", "0", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["games_played"] == 2


@pytest.mark.parametrize(
    "defect, kwargs, message",
    [
        ("input_name", dict(input_name="obs"), "inputs are ['obs'], expected exactly ['observation']"),
        (
            "fixed_batch",
            dict(batch=2),
            "observation has a fixed batch axis [2, 29]; the batch axis must be dynamic",
        ),
        ("value_shape", dict(value_dim=2), "value has shape ['batch', 2], expected [batch, 1]"),
        (
            "dynamic_obs",
            dict(features="features", weight_rows=30),
            "observation has a dynamic feature axis but the model does not accept 29 features (tictactoe's obs_size)",
        ),
    ],
)
def test_cli_contract_errors_are_one_line_naming_the_problem(tmp_path, defect, kwargs, message):
    path = publish(tmp_path, _graph_model(**kwargs), f"{defect}.onnx")
    out = _cli("--model", str(path), "--games", "2", "--seed", "0")
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"error: {defect}.onnx: ") and message in lines[0], lines[0]
    assert out.stdout == ""


def _nan_on_boards_model(path) -> None:
    """A model that is finite on an all-zero observation and NaN on every real position
    (sqrt of minus the stone/mask/side sum), exported by the trainer's own exporter."""
    import torch
    from torch import nn

    from trainer.model.onnx_export import export_onnx

    spec = get_game("tictactoe").spec

    class NanOnBoards(nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = nn.Linear(spec.obs_size, spec.num_actions)
            self.value = nn.Linear(spec.obs_size, 1)

        def forward(self, obs):
            poison = torch.sqrt(-obs.sum(dim=1, keepdim=True))
            return self.policy(obs) + poison, torch.tanh(self.value(obs) + poison)

    export_onnx(NanOnBoards().eval(), spec, path, {"step": "1"})


@pytest.mark.parametrize("sims", ["0", "4"])
def test_cli_refuses_a_model_that_is_nan_on_real_positions(tmp_path, sims):
    path = tmp_path / "nan_on_boards.onnx"
    _nan_on_boards_model(path)
    out = _cli("--model", str(path), "--games", "2", "--seed", "0", "--sims", sims)
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("error: nan_on_boards.onnx: ") and "NaN" in lines[0], lines[0]
    assert out.stdout == ""


def test_a_model_nan_on_real_positions_is_refused_without_a_spec_too(tmp_path):
    """The actor's and evaluator's loader finds the game from the model's env_id metadata."""
    path = tmp_path / "nan_on_boards.onnx"
    _nan_on_boards_model(path)
    with pytest.raises(ModelContractError, match="NaN or inf on 8 of 8 trial positions"):
        OnnxPolicy(path)


def test_cli_sprt_stops_early_with_its_decision_and_an_elo_interval(ttt_model):
    out = _cli(
        "--model",
        str(ttt_model),
        "--games",
        "400",
        "--opponent",
        "perfect",
        "--seed",
        "0",
        "--temperature",
        "1",
        "--sprt",
        "0,50",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    s = d["sprt"]
    assert s["result"] == "H0" and s["llr"] <= s["lower_bound"]  # nobody is stronger than perfect play
    assert (
        d["games_played"] < 400
        and s["pairs"] == d["games_played"] // 2
        and sum(s["pentanomial"]) == s["pairs"]
    )
    assert d["elo"] < 0 and (d["elo_ci"][0] is None or d["elo_ci"][0] <= d["elo"]) and d["elo_ci"][1] < 0
    text = _cli(
        "--model",
        str(ttt_model),
        "--games",
        "400",
        "--opponent",
        "perfect",
        "--seed",
        "0",
        "--temperature",
        "1",
        "--sprt",
        "0,50",
    ).stdout
    assert "Elo difference:" in text and "H0 accepted" in text


def test_cli_sprt_against_another_model(ttt_model):
    out = _cli(
        "--model",
        str(ttt_model),
        "--games",
        "32",
        "--opponent",
        f"model:{ttt_model}",
        "--seed",
        "1",
        "--temperature",
        "1",
        "--sprt",
        "0,50",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["opponent"] == "model:latest.onnx" and 2 <= d["games_played"] <= 32
    assert d["sprt"]["result"] in ("H0", "continue")  # a model is not 50 Elo stronger than itself


@pytest.mark.parametrize("value", ["50", "10,0", "a,b"])
def test_cli_bad_sprt_is_one_error_line(ttt_model, value):
    out = _cli("--model", str(ttt_model), "--games", "4", "--sprt", value)
    assert out.returncode == 2 and out.stdout == ""
    assert (
        out.stderr.startswith("error:")
        and "--sprt" in out.stderr
        and len(out.stderr.strip().splitlines()) == 1
    )


def test_cli_missing_opponent_model_is_one_error_line(ttt_model, tmp_path):
    out = _cli("--model", str(ttt_model), "--games", "4", "--opponent", f"model:{tmp_path / 'none.onnx'}")
    assert out.returncode == 2 and out.stderr.startswith("error:") and "none.onnx" in out.stderr


def _preference_model(logits: list[float], step: int) -> bytes:
    """A tic-tac-toe model with the same move preferences in every position (value 0)."""
    from onnx import TensorProto, helper, numpy_helper

    zeros_pol = numpy_helper.from_array(np.zeros((29, 9), np.float32), "w_pol")
    bias = numpy_helper.from_array(np.array(logits, np.float32), "b_pol")
    zeros_val = numpy_helper.from_array(np.zeros((29, 1), np.float32), "w_val")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["observation", "w_pol"], ["p0"]),
            helper.make_node("Add", ["p0", "b_pol"], ["policy_logits"]),
            helper.make_node("MatMul", ["observation", "w_val"], ["v"]),
            helper.make_node("Tanh", ["v"], ["value"]),
        ],
        "preference",
        [helper.make_tensor_value_info("observation", TensorProto.FLOAT, ["batch", 29])],
        [
            helper.make_tensor_value_info("policy_logits", TensorProto.FLOAT, ["batch", 9]),
            helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch", 1]),
        ],
        initializer=[zeros_pol, bias, zeros_val],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.add(key="env_id", value="tictactoe")
    model.metadata_props.add(key="step", value=str(step))
    return model.SerializeToString()


# Centre, then corners: far stronger than edges first.
CENTRE_FIRST = [3.0, 0.0, 3.0, 0.0, 6.0, 0.0, 3.0, 0.0, 3.0]
EDGES_FIRST = [0.0, 3.0, 0.0, 3.0, 0.0, 3.0, 0.0, 3.0, 0.0]


def test_gate_keeps_best_onnx_the_strongest_model_and_latest_untouched(tmp_path):
    import types

    from trainer.hooks.evaluate import EvalHook, Gate

    models = tmp_path / "models"
    hook = EvalHook(models, "tictactoe", every=1, games=4, seed=0, gate=Gate(games=200, elo=(0.0, 50.0)))
    loop = types.SimpleNamespace(stopping=False)

    def evaluate(data: bytes) -> None:
        publish(models, data)
        hook.run(loop, {})
        hook._thread.join(timeout=120)
        assert (models / "latest.onnx").read_bytes() == data  # the gate never touches latest.onnx

    weak, strong, weak_again = (
        _preference_model(EDGES_FIRST, 1),
        _preference_model(CENTRE_FIRST, 2),
        _preference_model(EDGES_FIRST, 3),
    )
    evaluate(weak)
    assert (models / "best.onnx").read_bytes() == weak and hook.stats()[
        "best_model_step"
    ] == 1  # the first best
    evaluate(strong)
    gate = hook.stats()["last_gate"]
    assert gate["result"] == "H1" and gate["promoted"] and gate["step"] == 2 and gate["games_played"] < 200
    assert (models / "best.onnx").read_bytes() == strong and hook.stats()["best_model_step"] == 2
    evaluate(weak_again)
    gate = hook.stats()["last_gate"]
    assert gate["step"] == 3 and not gate["promoted"] and gate["result"] in ("H0", "continue")
    assert (models / "best.onnx").read_bytes() == strong and hook.stats()["best_model_step"] == 2
    assert not list(models.glob(".*.tmp"))  # the candidate copy is gone
    json.dumps(hook.stats(), allow_nan=False)
    # The best model's step survives a restart through the checkpoint.
    restored = EvalHook(models, "tictactoe", every=1, games=4, gate=Gate())
    restored.load_state_dict(hook.state_dict())
    assert restored.stats()["best_model_step"] == 2


def test_without_gate_no_best_model_and_no_gate_stats(tmp_path):
    import types

    from trainer.hooks.evaluate import EvalHook

    models = tmp_path / "models"
    publish(models, _preference_model(CENTRE_FIRST, 1))
    hook = EvalHook(models, "tictactoe", every=1, games=4, seed=0)
    hook.run(types.SimpleNamespace(stopping=False), {})
    hook._thread.join(timeout=60)
    assert hook.stats()["last_eval"]["games_played"] == 4
    assert "best_model_step" not in hook.stats() and not (models / "best.onnx").exists()


def test_gate_sprt_setting_is_validated():
    from pydantic import ValidationError

    from trainer.config.daemon import DaemonConfig

    assert DaemonConfig(gate=True, gate_sprt="0,30").gate_sprt == "0,30"
    with pytest.raises(ValidationError, match="gate_sprt"):
        DaemonConfig(gate_sprt="30,0")


def test_daemon_with_gate_keeps_best_onnx_and_shows_its_step(tmp_path):
    from daemon_harness import read_stats, start_daemon, stop, wait_for
    from replay_data import write_random_games

    write_random_games(tmp_path / "replay.db", "tictactoe", 40, seed=7)
    proc = start_daemon(
        tmp_path,
        "--steps",
        "0",
        "--checkpoint-interval",
        "20",
        "--eval-interval",
        "20",
        "--eval-games",
        "10",
        "--gate",
        "--gate-games",
        "40",
        "--threads",
        "1",
        "--min-rows",
        "50",
        "--max-reuse",
        "0",
        "--stats-interval",
        "5",
    )
    stats = wait_for(
        lambda: (s := read_stats(tmp_path)) and s.get("best_model_step") is not None and s,
        90,
        "a best model",
        proc,
        tmp_path,
    )
    assert stop(proc) == 0
    best = tmp_path / "models" / "best.onnx"
    assert best.exists() and OnnxPolicy(best).step == stats["best_model_step"]
    assert (tmp_path / "models" / "latest.onnx").exists()
