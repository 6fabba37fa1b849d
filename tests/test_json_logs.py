"""`--log-format json`: every line a program logs is one JSON object (time, level, logger,
message) and progress lines carry their figures as fields, for log shippers."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from datetime import datetime

import numpy as np
import pytest
from actor_support import actor_cmd, actor_env
from daemon_harness import REPO, start_daemon, tail_log
from replay_data import write_random_games

from actor_stub.config import ActorConfig
from trainer.config.daemon import DaemonConfig
from trainer.config.loader import load_config
from trainer.config.offline import (
    BCConfig,
    CQLConfig,
    ImitationConfig,
    IQLConfig,
    SplitConfig,
)
from trainer.dashboard.server import DashboardConfig
from trainer.evaluator.__main__ import EvaluatorConfig
from trainer.logging_setup import JsonFormatter


def json_lines(text: str) -> list[dict]:
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    for e in entries:
        assert {"time", "level", "logger", "message"} <= e.keys(), e
        datetime.fromisoformat(e["time"])
    return entries


def test_daemon_log_is_json_lines_with_progress_fields(tmp_path):
    write_random_games(tmp_path / "replay.db", "tictactoe", 30, seed=41)
    proc = start_daemon(
        tmp_path,
        "--steps",
        "30",
        "--log-interval",
        "10",
        "--min-rows",
        "50",
        "--max-reuse",
        "0",
        "--threads",
        "1",
        "--eval-interval",
        "0",
        "--log-format",
        "json",
    )
    assert proc.wait(90) == 0, tail_log(tmp_path)
    entries = json_lines((tmp_path / "daemon.log").read_text())
    progress = [e for e in entries if "samples_per_sec" in e]
    assert [e["step"] for e in progress] == [10, 20, 30]
    for e in progress:
        assert e["logger"] == "trainer" and e["level"] == "INFO"
        assert isinstance(e["total_loss"], float) and isinstance(e["learning_rate"], float)
        assert type(e["window_size"]) is int and type(e["rows_seen"]) is int


def test_actor_log_is_json_lines_with_throughput_fields(tmp_path):
    r = subprocess.run(
        actor_cmd(
            "--db",
            str(tmp_path / "replay.db"),
            "--model-dir",
            str(tmp_path / "models"),
            "--episodes",
            "40",
            "--sims",
            "2",
            "--log-interval",
            "0.05",
            "--actor-id",
            "j",
            "--log-format",
            "json",
        ),
        cwd=REPO,
        env=actor_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    entries = json_lines(r.stderr)
    progress = [e for e in entries if "games_per_sec" in e]
    assert progress and all(e["actor_id"] == "j" and type(e["games"]) is int for e in progress)
    assert [e["games"] for e in progress] == sorted(e["games"] for e in progress)


@pytest.mark.parametrize(
    "model, required",
    [
        (DaemonConfig, []),
        (ActorConfig, []),
        (EvaluatorConfig, []),
        (DashboardConfig, []),
        (ImitationConfig, ["--data", "x.h5"]),
        (BCConfig, ["--data", "x.jsonl"]),
        (IQLConfig, ["--data", "x.jsonl"]),
        (CQLConfig, ["--data", "x.jsonl"]),
        (SplitConfig, ["--data", "x.jsonl", "--out-train", "a", "--out-val", "b"]),
    ],
)
def test_every_program_takes_the_setting(model, required, capsys):
    assert load_config(model, [*required, "--log-format", "json"], environ={}).log_format == "json"
    assert load_config(model, required, environ={}).log_format == "text"
    with pytest.raises(SystemExit) as exc:
        load_config(model, [*required, "--log-format", "xml"], environ={})
    assert exc.value.code == 2 and "--log-format" in capsys.readouterr().err


def test_exceptions_and_odd_values_stay_one_json_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test_json_logs")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("bad\nrow")
        except ValueError:
            logger.exception(
                "failed %s",
                "here",
                extra={
                    "fields": {
                        "loss": float("nan"),
                        "path": REPO,
                        "lr": np.float32(0.5),
                        "grad": np.float32("inf"),
                    }
                },
            )
    finally:
        logger.removeHandler(handler)
    (entry,) = json_lines(stream.getvalue())
    assert (
        entry["message"] == "failed here"
        and entry["level"] == "ERROR"
        and entry["logger"] == "test_json_logs"
    )
    assert (
        entry["loss"] is None and entry["path"] == str(REPO) and entry["lr"] == 0.5 and entry["grad"] is None
    )
    assert "ValueError: bad\nrow" in entry["exception"]


def test_warnings_become_json_lines_too():
    from trainer.logging_setup import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", "json")
        root.handlers[0].setStream(stream)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    (entry,) = json_lines(stream.getvalue())
    assert entry["logger"] == "py.warnings" and "DeprecationWarning: old API" in entry["message"]
