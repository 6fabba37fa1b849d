"""The launcher's supervision, with small real child processes standing in for the real ones."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from trainer.launcher import (
    ChildSpec, Console, LauncherConfig, Supervisor, build_children, dashboard_url, main,
)

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def sleeper(marker: Path) -> list[str]:
    """Runs until SIGTERM, then records that it got it and exits 0."""
    return py(f"""
        import signal, sys, time, pathlib
        def bye(*_):
            pathlib.Path({str(marker)!r}).write_text("terminated")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        pathlib.Path({str(marker)!r} + ".ready").write_text("ready")
        while True:
            time.sleep(0.05)
    """)


def crasher(log: Path, code: int = 3) -> list[str]:
    """Appends its start time to `log` and exits with `code` at once."""
    return py(f"""
        import sys, time
        with open({str(log)!r}, "a") as f:
            f.write(f"{{time.monotonic()}}\\n")
        print("crashing now", flush=True)
        sys.exit({code})
    """)


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(sup.run()), daemon=True)
    t.start()
    return t, result


def test_command_lines_name_the_contract_flags(tmp_path):
    cfg = LauncherConfig(env_id="connect4", data=tmp_path / "d", actors=2, steps=300, port=9000)
    specs = {s.name: s for s in build_children(cfg, python="PY")}
    assert list(specs) == ["actor-1", "actor-2", "trainer", "dashboard"]
    data = (tmp_path / "d").resolve()
    assert specs["actor-1"].argv == ["PY", "-m", "actor_stub", "--env-id", "connect4",
                                     "--db", str(data / "replay.db"), "--model-dir", str(data / "models"),
                                     "--threads", "1"]
    t = specs["trainer"].argv
    assert t[:4] == ["PY", "-m", "trainer", "train"]
    for flag, value in (("--db", data / "replay.db"), ("--model-dir", data / "models"),
                        ("--stats", data / "stats.json"), ("--env-id", "connect4"),
                        ("--threads", "1"), ("--steps", "300")):
        assert t[t.index(flag) + 1] == str(value)
    d = specs["dashboard"].argv
    assert d[:3] == ["PY", "-m", "trainer.dashboard"]
    assert d[d.index("--port") + 1] == "9000" and d[d.index("--host") + 1] == "127.0.0.1"
    assert all(s.env["OMP_NUM_THREADS"] == "1" for s in specs.values())
    assert specs["trainer"].finishes_run and specs["dashboard"].outlives_run
    assert not specs["dashboard"].essential
    no_steps = build_children(LauncherConfig(data=tmp_path, dashboard=False, actors=0), python="PY")
    assert [s.name for s in no_steps] == ["trainer"] and "--steps" not in no_steps[0].argv
    assert dashboard_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/"


def test_per_game_trainer_presets_yield_to_the_users_settings(tmp_path, monkeypatch):
    def trainer_argv(**kw):
        specs = build_children(LauncherConfig(data=tmp_path, dashboard=False, actors=0, **kw), python="PY")
        return specs[0].argv

    def flag(argv, name):
        return argv[argv.index(name) + 1] if name in argv else None

    monkeypatch.delenv("TRAINER_MAX_REUSE", raising=False)
    monkeypatch.delenv("TRAINER_STEPS", raising=False)
    ttt = trainer_argv()
    assert flag(ttt, "--max-reuse") == "16" and flag(ttt, "--steps") is None
    c4 = trainer_argv(env_id="connect4")
    assert flag(c4, "--max-reuse") is None and flag(c4, "--steps") == "0"
    assert flag(trainer_argv(max_reuse=2.5), "--max-reuse") == "2.5"
    monkeypatch.setenv("TRAINER_MAX_REUSE", "3")
    monkeypatch.setenv("TRAINER_STEPS", "50")
    assert flag(trainer_argv(), "--max-reuse") is None
    assert flag(trainer_argv(env_id="connect4"), "--steps") is None


def test_crashed_child_restarts_with_exponential_backoff(tmp_path):
    starts, marker = tmp_path / "starts", tmp_path / "sleeper"
    out = io.StringIO()
    sup = Supervisor(
        [ChildSpec("crashy", crasher(starts)), ChildSpec("steady", sleeper(marker))],
        restart_delay=0.2, max_restart_delay=0.8, healthy_after=60, max_quick_failures=0,
        stop_timeout=5, console=Console(out),
    )
    thread, result = run_in_thread(sup)
    wait_until(lambda: starts.exists() and len(starts.read_text().split()) >= 5, timeout=20)
    sup.stop_requested.set()
    thread.join(10)
    assert result == [0]
    times = [float(x) for x in starts.read_text().split()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    for gap, delay in zip(gaps, (0.2, 0.4, 0.8, 0.8)):
        assert gap >= delay, (gaps, out.getvalue())
    log = out.getvalue()
    for delay in ("0.2", "0.4", "0.8"):
        assert f"crashy exited with code 3 after" in log and f"restarting in {delay} s" in log
    assert "[crashy] crashing now" in log  # child output, prefixed with its name
    assert marker.read_text() == "terminated"  # the healthy child got SIGTERM at the end
    assert "steady" not in log.split("stopping")[0].replace("[steady]", "")  # never restarted


def test_gives_up_on_an_essential_child_that_keeps_failing_fast(tmp_path):
    marker = tmp_path / "sleeper"
    out = io.StringIO()
    sup = Supervisor(
        [ChildSpec("trainer", crasher(tmp_path / "starts", code=2)), ChildSpec("actor", sleeper(marker))],
        restart_delay=0.05, max_restart_delay=0.1, healthy_after=30, max_quick_failures=3,
        stop_timeout=5, console=Console(out),
    )
    assert sup.run() == 1
    assert len((tmp_path / "starts").read_text().split()) == 3
    assert "3 quick failures in a row, giving up: stopping the run" in out.getvalue()
    assert marker.read_text() == "terminated"


def test_a_non_essential_child_is_left_stopped(tmp_path):
    out = io.StringIO()
    sup = Supervisor(
        [ChildSpec("dashboard", crasher(tmp_path / "starts"), essential=False),
         ChildSpec("actor", sleeper(tmp_path / "sleeper"))],
        restart_delay=0.05, max_restart_delay=0.1, max_quick_failures=2, stop_timeout=5,
        console=Console(out),
    )
    thread, result = run_in_thread(sup)
    wait_until(lambda: "leaving it stopped" in out.getvalue())
    time.sleep(0.3)
    assert thread.is_alive()  # the run goes on without it
    sup.stop_requested.set()
    thread.join(10)
    assert result == [0] and len((tmp_path / "starts").read_text().split()) == 2


def test_trainer_reaching_its_steps_ends_the_run_but_keeps_the_dashboard(tmp_path):
    actor, dash = tmp_path / "actor", tmp_path / "dash"
    out = io.StringIO()
    finished = threading.Event()
    sup = Supervisor(
        [ChildSpec("actor-1", sleeper(actor)),
         ChildSpec("trainer", py("import time; time.sleep(0.3)"), finishes_run=True),
         ChildSpec("dashboard", sleeper(dash), essential=False, outlives_run=True)],
        stop_timeout=5, console=Console(out), on_finished=finished.set,
    )
    thread, result = run_in_thread(sup)
    assert finished.wait(15)
    wait_until(lambda: actor.exists())
    assert actor.read_text() == "terminated" and not dash.exists()  # dashboard still up
    assert "trainer finished (exit 0" in out.getvalue()
    sup.stop_requested.set()
    thread.join(10)
    assert result == [0] and dash.read_text() == "terminated"

    # Without a dashboard there is nothing left to watch: run() returns 0 by itself.
    sup = Supervisor([ChildSpec("actor-1", sleeper(tmp_path / "a2")),
                      ChildSpec("trainer", py("pass"), finishes_run=True)],
                     stop_timeout=5, console=Console(io.StringIO()))
    assert sup.run() == 0 and (tmp_path / "a2").read_text() == "terminated"


SUPERVISE_SCRIPT = """
import sys
from trainer.launcher import ChildSpec, Console, Supervisor, supervise
polite, stubborn = sys.argv[1], sys.argv[2]
STUBBORN = '''
import os, signal, time, pathlib
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(%r).write_text(str(os.getpid()))
while True:
    time.sleep(0.05)
''' % stubborn
specs = [ChildSpec("polite", sys.argv[3:]), ChildSpec("stubborn", [sys.executable, "-c", STUBBORN])]
sys.exit(supervise(Supervisor(specs, stop_timeout=1.0)))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_children_cleanly_then_kills_stragglers(tmp_path, sig):
    polite, stubborn = tmp_path / "polite", tmp_path / "stubborn.pid"
    proc = subprocess.Popen([PY, "-c", SUPERVISE_SCRIPT, str(polite), str(stubborn), *sleeper(polite)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: Path(str(polite) + ".ready").exists() and stubborn.exists())
        time.sleep(0.1)  # let the stubborn child's SIG_IGN settle before the signal
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert polite.read_text() == "terminated"
    assert "stubborn did not exit; SIGKILL" in out
    assert 0.9 <= elapsed < 10, elapsed
    with pytest.raises(ProcessLookupError):
        os.kill(int(stubborn.read_text()), 0)


def test_main_prints_where_to_look_and_exits_when_training_is_done(tmp_path, capsys):
    def fake(cfg: LauncherConfig) -> list[ChildSpec]:
        return [ChildSpec("actor-1", sleeper(tmp_path / "actor")),
                ChildSpec("trainer", py("print('trained')"), finishes_run=True)]

    code = main(["--data", str(tmp_path / "data"), "--no-dashboard", "--stop-timeout", "5"], build=fake)
    out = capsys.readouterr().out
    assert code == 0
    assert f"data in {(tmp_path / 'data').resolve()}" in out and "[trainer] trained" in out
    assert (tmp_path / "data" / "models").is_dir()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_main_refuses_a_busy_dashboard_port(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["--data", str(tmp_path), "--port", str(port)], build=lambda cfg: [])
    assert code == 1 and f"port 127.0.0.1:{port} is not free" in capsys.readouterr().err
