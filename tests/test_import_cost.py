"""Each program loads only the heavy libraries its own work needs.

The suite and the launcher start many actor, evaluator and daemon processes; torch, onnx
(with ml_dtypes) and torch._dynamo each cost a second or more of CPU at every start, so a
process that never trains or exports must not import them by accident through a shared
module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "ml_dtypes", "h5py", "psycopg", "scipy")


def heavy_modules_after(*modules: str) -> set[str]:
    """The HEAVY modules a fresh interpreter holds after importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize(
    "program, modules",
    [
        ("actor", ["actor_stub.__main__", "actor_stub.process", "actor_stub.selfplay"]),
        ("evaluator", ["trainer.evaluator.__main__", "trainer.evaluator.match"]),
        ("launcher", ["trainer.launcher"]),
        ("dashboard", ["trainer.dashboard.server"]),
    ],
)
def test_programs_without_a_network_import_no_heavy_library(program, modules):
    assert heavy_modules_after(*modules) == set(), program


def test_the_daemon_imports_onnx_only_when_it_publishes():
    # A daemon waiting for data, or refusing a setting, never exports; the first publish
    # imports onnx, and the contract checks still run (tests/test_onnx_publish.py).
    assert heavy_modules_after("trainer.commands.train", "trainer.commands.bc") == {"torch"}
