"""`python -m trainer.evaluator`: play a published ONNX model against a baseline.

The model plays its raw policy, or searches with --sims MCTS simulations guided by the
model; --temperature 0 plays its best move (highest logit, or most visits), T > 0 samples.
Colours alternate game by game. The score is (wins + draws / 2) / games, reported with a 95%
Wilson interval, and as a logistic Elo difference with its 95% interval (from the scores of
colour-swapped game pairs). --min-score X makes the exit code 1 when the score is below X (for
CI gates). --sprt elo0,elo1 stops as soon as a sequential probability ratio test over game pairs
decides between "Elo <= elo0" (H0) and "Elo >= elo1" (H1) with error rates --alpha and --beta;
with --opponent model:OTHER.onnx it decides whether the model is stronger than another one.
--player SPEC puts a baseline player in the model's seat instead (e.g. `mcts:50+epsilon:0.3`,
the behaviour policy of data generated with that teacher and epsilon), scored the same way.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer.config.loader import load_config
from trainer.evaluator.sprt import parse_elo_bounds
from trainer.logging_setup import LogFormat, configure_logging
from trainer.model.contract import LATEST_MODEL_NAME
from trainer.search.players import check_baseline_spec

log = logging.getLogger("trainer.evaluator")


# The flag is `--json`; the loader names flags after fields, and a field called `json`
# shadows the deprecated BaseModel.json() (harmless here: we never call it).
warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)


class EvaluatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Path = Field(Path("./data/models") / LATEST_MODEL_NAME, description="ONNX model to evaluate.")
    player: str | None = Field(
        None,
        description="Evaluate this player instead of --model: random, perfect, mcts:SIMS, each optionally "
        "+epsilon:E (a random legal move with probability E; e.g. the behaviour policy mcts:50+epsilon:0.3). "
        "Needs --env-id.",
    )
    db: Path | None = Field(None, description="Replay DB whose game_metadata gives the shapes (optional).")
    env_id: str | None = Field(None, description="Game; default: the model's env_id metadata.")
    games: int = Field(100, ge=1, description="Games to play (colours alternate).")
    opponent: str = Field(
        "random",
        description="Opponent: random, perfect (tictactoe only), mcts:SIMS (rollout MCTS), each optionally "
        "+epsilon:E, or model:PATH (another ONNX model, playing with the same --sims and --temperature).",
    )
    sims: int = Field(0, ge=0, description="MCTS simulations for the model per move; 0 = its raw policy.")
    temperature: float = Field(
        0.0,
        ge=0,
        description="Model move temperature: softmax(logits / T) for the raw policy, visits^(1/T) with --sims; 0 = greedy.",
    )
    c_puct: float = Field(
        1.5,
        gt=0,
        description="PUCT constant of the model's search (and a model:PATH opponent's); the mcts:SIMS opponent is "
        "UCT with c=2 and a solver, like OpenSpiel's MCTSBot.",
    )
    threads: int = Field(1, ge=1, le=1024, description="onnxruntime intra-op threads.")
    seed: int | None = Field(None, description="Random seed (unset = from the OS).")
    min_score: float | None = Field(
        None, ge=0, le=1, description="Exit with code 1 if the score is below this."
    )
    sprt: str | None = Field(
        None,
        description="ELO0,ELO1: a sequential probability ratio test of H0 'Elo <= ELO0' against H1 'Elo >= ELO1' "
        "over colour-swapped game pairs; stops when it decides or after --games. Two greedy players repeat "
        "the same games: give the model --temperature or --sims.",
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="SPRT: probability of accepting H1 when H0 holds.")
    beta: float = Field(0.05, gt=0, lt=0.5, description="SPRT: probability of accepting H0 when H1 holds.")
    json: bool = Field(False, description="Print the result as one JSON object instead of the text block.")
    verbose: bool = Field(
        False, description="Print every game's moves and final board (to stderr with --json)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("WARNING", description="Logging level.")
    log_format: LogFormat = "text"

    @field_validator("opponent")
    @classmethod
    def _opponent(cls, v: str) -> str:
        if v.startswith("model:") and len(v) > len("model:"):
            return v
        return check_baseline_spec(v, allow_model=True)

    @field_validator("player")
    @classmethod
    def _player(cls, v: str | None) -> str | None:
        return None if v is None else check_baseline_spec(v)

    @model_validator(mode="after")
    def _player_game(self) -> EvaluatorConfig:
        if self.player is not None and not self.env_id:
            raise ValueError("--player needs --env-id")
        if self.player is not None and self.opponent.startswith("model:"):
            raise ValueError("--player plays baseline opponents only, not model:PATH")
        return self

    @field_validator("sprt")
    @classmethod
    def _sprt(cls, v: str | None) -> str | None:
        if v is not None:
            parse_elo_bounds(v)
        return v


def _pct(k: int, n: int) -> str:
    return f"{100.0 * k / n:5.1f}%" if n else "  n/a"


def _elo_text(elo: float) -> str:
    return f"{elo:+.0f}" if math.isfinite(elo) else ("+inf" if elo > 0 else "-inf")


def _sprt_lines(s) -> list[str]:
    decided = {
        "H1": f"H1 accepted: Elo >= {s.elo1:g}",
        "H0": f"H0 accepted: Elo <= {s.elo0:g}",
        "continue": "no decision within --games",
    }[s.decision]
    return [
        f"SPRT:              [{s.elo0:g}, {s.elo1:g}] alpha {s.alpha:g} beta {s.beta:g}: {decided}",
        f"                   LLR {s.llr:.2f} (bounds {s.lower:.2f}, {s.upper:.2f}) after {s.pairs} pairs, "
        f"pentanomial {s.pentanomial}",
    ]


def format_result(r) -> str:
    n = r.games_played
    first = r.wins_as_first + r.draws_as_first + r.losses_as_first
    second = n - first
    lo, hi = r.ci
    model_name = Path(r.model).name + (f" (step {r.model_step})" if r.model_step is not None else "")
    if lo > 0.5:
        verdict = f"model is stronger than {r.opponent} (95% CI above 0.5)"
    elif hi < 0.5:
        verdict = f"model is weaker than {r.opponent} (95% CI below 0.5)"
    else:
        verdict = f"no significant difference from {r.opponent} at 95%"
    lines = [
        f"Evaluation Results: {model_name} vs {r.opponent}",
        "=" * 60,
        f"Game:              {r.env_id}",
        f"Games played:      {n} ({first} with the model first, {second} second)",
        f"Model wins:        {r.wins:4d} ({_pct(r.wins, n)})  as first: {r.wins_as_first} ({_pct(r.wins_as_first, first)}), "
        f"as second: {r.wins_as_second} ({_pct(r.wins_as_second, second)})",
        f"{r.opponent + ' wins:':<19}{r.losses:4d} ({_pct(r.losses, n)})  as first: {r.losses_as_second} "
        f"({_pct(r.losses_as_second, second)}), as second: {r.losses_as_first} ({_pct(r.losses_as_first, first)})",
        f"Draws:             {r.draws:4d} ({_pct(r.draws, n)})",
        f"Avg game length:   {r.avg_game_length:.1f} plies",
        f"Model score:       {r.score:.3f}  (95% CI {lo:.3f} - {hi:.3f}, Wilson)",
        f"Elo difference:    {_elo_text(r.elo)}  (95% CI {_elo_text(r.elo_ci[0])} to {_elo_text(r.elo_ci[1])})",
        f"Time:              {r.elapsed_s:.1f}s ({n / max(r.elapsed_s, 1e-9):.1f} games/s)",
        f"Verdict:           {verdict}",
    ]
    if r.sprt is not None:
        lines += _sprt_lines(r.sprt)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(
        EvaluatorConfig,
        argv,
        prog="python -m trainer.evaluator",
        description=__doc__.split("\n\n")[0],
        env_prefix="EVALUATOR_",
    )
    configure_logging(cfg.log_level, cfg.log_format)
    from trainer.evaluator.match import evaluate_model, evaluate_player
    from trainer.games import get_game

    records: list = []
    try:
        if cfg.player is not None:
            result = evaluate_player(
                cfg.player,
                cfg.env_id,
                cfg.opponent,
                cfg.games,
                cfg.seed,
                c_puct=cfg.c_puct,
                records_out=records if cfg.verbose else None,
                sprt_elo=parse_elo_bounds(cfg.sprt) if cfg.sprt else None,
                alpha=cfg.alpha,
                beta=cfg.beta,
            )
        else:
            result = evaluate_model(
                cfg.model,
                cfg.env_id,
                cfg.opponent,
                cfg.games,
                cfg.seed,
                temperature=cfg.temperature,
                sims=cfg.sims,
                threads=cfg.threads,
                db=cfg.db,
                c_puct=cfg.c_puct,
                records_out=records if cfg.verbose else None,
                sprt_elo=parse_elo_bounds(cfg.sprt) if cfg.sprt else None,
                alpha=cfg.alpha,
                beta=cfg.beta,
            )
    except (FileNotFoundError, ValueError) as e:  # ModelContractError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.verbose:
        # With --json, stdout must be exactly one JSON object, so the game log goes to stderr.
        log_to = sys.stderr if cfg.json else sys.stdout
        game = get_game(result.env_id)
        for i, rec in enumerate(records):
            outcome = {1: "model wins", 0: "draw", -1: f"{result.opponent} wins"}[rec.result]
            print(
                f"game {i + 1}: model {'first' if rec.model_first else 'second'}, {outcome} in {rec.length} plies, moves {rec.moves}",
                file=log_to,
            )
            print(game.render(rec.final), end="\n\n", file=log_to)
    if cfg.json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_result(result))
    if cfg.min_score is not None:
        ok = result.score >= cfg.min_score
        if not cfg.json:
            print(
                f"{'PASS' if ok else 'FAIL'}: score {result.score:.3f} {'>=' if ok else '<'} --min-score {cfg.min_score}"
            )
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
