"""Bad input through the command line: one `error:` line naming the file, key, line or
setting, exit code 2, nothing written, no traceback. Covers numbers that overflow float32
or int64, JSON that Python's parser refuses in other ways, broken HDF5 flags and
attributes, `split` outputs that would overwrite an input, and unbounded settings.

The tables go through `python -m trainer`'s own `main` in this process (an escaping
exception fails the test just as a traceback would); one case of each kind also runs as a
real `python -m trainer` process, which costs seconds per case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_offline_inputs import GAMES, _good_line
from test_offline_teacher import write_hdf5, write_jsonl

from trainer import __main__ as trainer_main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--hidden", "16", "--layers", "1", "--batch-size", "32", "--no-progress", "--log-level", "ERROR"]
LENGTH = {"bc": ["--epochs", "1"], "imitation": ["--epochs", "1"], "iql": ["--steps", "2"]}
ROWS = sum(map(len, GAMES[:5]))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A real `python -m trainer` process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINER_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def main(*args: str, capsys, monkeypatch, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m trainer`'s main in this process, its outcome shaped like `cli`'s."""
    for name in [k for k in os.environ if k.startswith("TRAINER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        code = trainer_main.main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def assert_one_error_line(r: subprocess.CompletedProcess, *needles: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- data files ---------------------------------------------------------------------------


def _jsonl(tmp: Path, *lines: str) -> Path:
    path = tmp / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _obs_with(value: str) -> str:
    """Game 1 with the first number of step 0's observation replaced by `value` (raw JSON)."""
    return _good_line(1).replace('"observation": [0.0', f'"observation": [{value}', 1)


def _h5(tmp: Path, **overrides) -> Path:
    return write_hdf5(tmp / "d.h5", GAMES[:5], **overrides)


def _custom_h5(tmp: Path, **attrs) -> Path:
    """A game the trainer does not know, described by the file's attributes alone."""
    rng = np.random.default_rng(0)
    path = tmp / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("states", data=rng.random((64, 6)).astype(np.float32))
        f.create_dataset("actions", data=rng.integers(0, 3, 64))
        f.attrs["num_actions"] = 3
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def _floats(value: float, at: int = 3) -> np.ndarray:
    a = np.zeros(ROWS, dtype=np.float64)
    a[at] = value
    return a


def _states_with(value: float) -> np.ndarray:
    states = np.stack([p["obs"] for g in GAMES[:5] for p in g]).astype(np.float64)
    states[2, 0] = value
    return states


def _dones_with(value: float) -> np.ndarray:
    dones = np.asarray([p["done"] for g in GAMES[:5] for p in g], dtype=np.float64)
    dones[4] = value
    return dones


# command, data file maker, what the error line must name
BAD_DATA = {
    "jsonl observation beyond float32": (
        "bc",
        lambda t: _jsonl(t, _good_line(0), _obs_with("1e39")),
        ["d.jsonl:2 step 0", "observation"],
    ),
    "jsonl reward beyond float32": (
        "bc",
        lambda t: _jsonl(t, _good_line(0, reward=1e39)),
        ["d.jsonl:1 step 1", "reward"],
    ),
    "jsonl outcome of 400 digits": (
        "bc",
        lambda t: _jsonl(t, _good_line(0, outcome=10**400)),
        ["d.jsonl:1 step 1", "outcome"],
    ),
    "jsonl observation integer of 400 digits": (
        "bc",
        lambda t: _jsonl(t, _obs_with("1" * 400)),
        ["d.jsonl:1 step 0", "observation"],
    ),
    "jsonl integer beyond the parser's digit limit": (
        "bc",
        lambda t: _jsonl(t, _good_line(0), _obs_with("9" * 5000)),
        ["d.jsonl:2", "malformed JSON"],
    ),
    "jsonl action 10**30": (
        "bc",
        lambda t: _jsonl(t, _good_line(0, action=10**30)),
        ["d.jsonl:1 step 1", "action"],
    ),
    "jsonl nested 50000 deep": (
        "bc",
        lambda t: _jsonl(t, _good_line(0), "[" * 50_000),
        ["d.jsonl:2", "malformed JSON"],
    ),
    "iql jsonl reward beyond float32": (
        "iql",
        lambda t: _jsonl(t, _good_line(0), _good_line(1, reward=-1e39)),
        ["d.jsonl:2 step 1", "reward"],
    ),
    "hdf5 float64 state 1e300": (
        "imitation",
        lambda t: _h5(t, states=_states_with(1e300)),
        ["d.h5: row 2", "observation"],
    ),
    "hdf5 reward 1e39": ("imitation", lambda t: _h5(t, rewards=_floats(1e39)), ["d.h5: row 3", "reward"]),
    "hdf5 next state 1e300": (
        "iql",
        lambda t: _h5(t, d4rl=True, next_observations=_states_with(1e300)),
        ["d.h5: row 2", "next observation"],
    ),
    "hdf5 done NaN": ("imitation", lambda t: _h5(t, dones=_dones_with(np.nan)), ["d.h5: row 4", "done"]),
    "hdf5 done 2": ("imitation", lambda t: _h5(t, dones=_dones_with(2)), ["d.h5: row 4", "done"]),
    "hdf5 timeout 3": ("iql", lambda t: _h5(t, d4rl=True, timeouts=_floats(3.0)), ["d.h5: row 3", "timeout"]),
    "hdf5 float action 1e30": (
        "imitation",
        lambda t: _h5(t, legal_masks=None, actions=_floats(1e30)),
        ["d.h5: row 3", "action"],
    ),
    "hdf5 player_count 0": ("imitation", lambda t: _custom_h5(t, player_count=0), ["d.h5", "player_count"]),
    "hdf5 legal_mask_offset -2": (
        "imitation",
        lambda t: _custom_h5(t, legal_mask_offset=-2),
        ["d.h5", "legal_mask_offset"],
    ),
    "hdf5 num_actions 0": ("imitation", lambda t: _custom_h5(t, num_actions=0), ["d.h5", "num_actions"]),
    "hdf5 inferred action space too large": (
        "imitation",
        lambda t: _custom_h5(t, num_actions=3) and _h5_actions(t, 10**12),
        ["d.h5", "action"],
    ),
}


def _h5_actions(tmp: Path, top: int) -> Path:
    path = tmp / "d.h5"
    with h5py.File(path, "a") as f:
        del f.attrs["num_actions"]
        actions = f["actions"][:]
        actions[7] = top
        del f["actions"]
        f.create_dataset("actions", data=actions)
    return path


def run_bad_data(case: str, tmp_path: Path, run) -> None:
    command, make, needles = BAD_DATA[case]
    data = make(tmp_path)
    r = run(
        command,
        "--data",
        str(data),
        "--model-dir",
        str(tmp_path / "out" / "models"),
        *FAST,
        *LENGTH[command],
        cwd=tmp_path,
    )
    assert_one_error_line(r, *needles)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_error_line(case, tmp_path, capsys, monkeypatch):
    run_bad_data(case, tmp_path, lambda *a, cwd: main(*a, capsys=capsys, monkeypatch=monkeypatch, cwd=cwd))


@pytest.mark.parametrize("case", ["jsonl nested 50000 deep", "hdf5 float64 state 1e300"])
def test_bad_data_in_a_real_process(case, tmp_path):
    run_bad_data(case, tmp_path, cli)


def test_split_refuses_to_overwrite_its_input(tmp_path, capsys, monkeypatch):
    data = write_jsonl(tmp_path / "all.jsonl", GAMES)
    original = data.read_bytes()
    (tmp_path / "sub").mkdir()
    os.link(data, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(data)
    other = str(tmp_path / "x.jsonl")
    cases = [
        ("--out-train", str(data), "--out-val", other),  # the same path
        (
            "--out-train",
            other,
            "--out-val",
            str(tmp_path / "sub" / ".." / "all.jsonl"),
        ),  # the same once resolved
        ("--out-train", str(tmp_path / "hard.jsonl"), "--out-val", other),  # another name of the same inode
        ("--out-train", other, "--out-val", str(tmp_path / "soft.jsonl")),  # a link to it
        ("--out-train", other, "--out-val", other),  # both outputs in one file
    ]
    for i, outs in enumerate(cases):
        args = ("split", "--data", str(data), *outs, "--log-level", "ERROR")
        r = (
            cli(*args, cwd=tmp_path)
            if i == 0
            else main(*args, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)
        )
        assert_one_error_line(r, "--out-")
        assert data.read_bytes() == original
        assert not Path(other).exists()


# setting, value, program args
BAD_SETTINGS = [
    ("--poll-interval", "inf", ["train"]),
    ("--max-reuse", "inf", ["train"]),
    ("--seed", "1" * 23, ["train"]),
    ("--lr", "inf", ["train"]),
    ("--max-wait", "1e300", ["train"]),
    ("--threads", "100000", ["train"]),
    ("--lr", "nan", ["bc", "--data", "x.jsonl"]),
    ("--seed", "-1", ["bc", "--data", "x.jsonl"]),
    ("--stream-threshold-mb", "inf", ["imitation", "--data", "x.h5"]),
    ("--hidden", "10000000", ["iql", "--data", "x.jsonl"]),
    ("--seed", "1" * 23, ["split", "--data", "x.jsonl", "--out-train", "a", "--out-val", "b"]),
]


@pytest.mark.parametrize(
    "flag, value, program", BAD_SETTINGS, ids=[f"{p[0]} {f} {v[:8]}" for f, v, p in BAD_SETTINGS]
)
def test_unbounded_setting_is_one_error_line(flag, value, program, tmp_path, capsys, monkeypatch):
    if program == ["train"]:  # should the setting pass, the daemon gives up on the missing DB at once
        program = ["train", "--db", str(tmp_path / "none.db"), "--max-wait", "0.01"]
    r = main(*program, flag, value, capsys=capsys, monkeypatch=monkeypatch, cwd=tmp_path)
    assert_one_error_line(r, f"invalid value for {flag}")
    assert os.listdir(tmp_path) == []


def test_unbounded_setting_in_a_real_process(tmp_path):
    r = cli(
        "train",
        "--db",
        str(tmp_path / "none.db"),
        "--max-wait",
        "0.01",
        "--poll-interval",
        "inf",
        cwd=tmp_path,
    )
    assert_one_error_line(r, "invalid value for --poll-interval")
    assert os.listdir(tmp_path) == []
