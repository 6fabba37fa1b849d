"""The launcher's supervision, with small real child processes standing in for the real ones,
then with the real actor, daemon and launcher: stopping, resuming, Connect Four."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from actor_support import assert_whole_games, publish, read_games, tiny_model_bytes
from daemon_harness import read_stats, tail_log, wait_for

from trainer.launcher import (
    ChildSpec,
    Console,
    LauncherConfig,
    Supervisor,
    build_children,
    dashboard_url,
    main,
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


def finisher(*sleepers: Path) -> list[str]:
    """Exits 0 once the given sleepers are ready (their SIGTERM handler set), like a trainer at --steps."""
    return py(f"""
        import os, time
        while not all(os.path.exists(p + ".ready") for p in {[str(p) for p in sleepers]!r}):
            time.sleep(0.02)
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
    assert specs["actor-1"].argv == [
        "PY",
        "-m",
        "actor_stub",
        "--env-id",
        "connect4",
        "--db",
        str(data / "replay.db"),
        "--model-dir",
        str(data / "models"),
        "--threads",
        "1",
    ]
    t = specs["trainer"].argv
    assert t[:4] == ["PY", "-m", "trainer", "train"]
    for flag, value in (
        ("--db", data / "replay.db"),
        ("--model-dir", data / "models"),
        ("--stats", data / "stats.json"),
        ("--env-id", "connect4"),
        ("--threads", "1"),
        ("--steps", "300"),
    ):
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
        restart_delay=0.2,
        max_restart_delay=0.8,
        healthy_after=60,
        max_quick_failures=0,
        stop_timeout=5,
        console=Console(out),
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
        assert "crashy exited with code 3 after" in log and f"restarting in {delay} s" in log
    assert "[crashy] crashing now" in log  # child output, prefixed with its name
    assert marker.read_text() == "terminated"  # the healthy child got SIGTERM at the end
    assert "steady" not in log.split("stopping")[0].replace("[steady]", "")  # never restarted


def test_gives_up_on_an_essential_child_that_keeps_failing_fast(tmp_path):
    marker = tmp_path / "sleeper"
    out = io.StringIO()
    sup = Supervisor(
        [ChildSpec("trainer", crasher(tmp_path / "starts", code=2)), ChildSpec("actor", sleeper(marker))],
        restart_delay=0.05,
        max_restart_delay=0.1,
        healthy_after=30,
        max_quick_failures=3,
        stop_timeout=5,
        console=Console(out),
    )
    assert sup.run() == 1
    assert len((tmp_path / "starts").read_text().split()) == 3
    assert "3 quick failures in a row, giving up: stopping the run" in out.getvalue()
    assert marker.read_text() == "terminated"


def test_a_non_essential_child_is_left_stopped(tmp_path):
    out = io.StringIO()
    sup = Supervisor(
        [
            ChildSpec("dashboard", crasher(tmp_path / "starts"), essential=False),
            ChildSpec("actor", sleeper(tmp_path / "sleeper")),
        ],
        restart_delay=0.05,
        max_restart_delay=0.1,
        max_quick_failures=2,
        stop_timeout=5,
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
        [
            ChildSpec("actor-1", sleeper(actor)),
            ChildSpec("trainer", finisher(actor, dash), finishes_run=True),
            ChildSpec("dashboard", sleeper(dash), essential=False, outlives_run=True),
        ],
        stop_timeout=5,
        console=Console(out),
        on_finished=finished.set,
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
    sup = Supervisor(
        [
            ChildSpec("actor-1", sleeper(tmp_path / "a2")),
            ChildSpec("trainer", finisher(tmp_path / "a2"), finishes_run=True),
        ],
        stop_timeout=5,
        console=Console(io.StringIO()),
    )
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
    proc = subprocess.Popen(
        [PY, "-c", SUPERVISE_SCRIPT, str(polite), str(stubborn), *sleeper(polite)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
    wait_until(lambda: _gone(int(stubborn.read_text())), timeout=5)


FAMILY_CHILD = """
import os, signal, subprocess, sys, time
marks, polite = sys.argv[1], sys.argv[2] == "polite"
def note(signum, frame):
    with open(marks, "a") as f:
        f.write(f"child {signal.Signals(signum).name}\\n")
    if polite:
        time.sleep(0.3)  # long enough for a signal sent to the group to reach the grandchild
        sys.exit(0)
signal.signal(signal.SIGTERM, note)
subprocess.Popen([sys.executable, "-c", sys.argv[3], marks])
while True:
    time.sleep(0.05)
"""
FAMILY_GRANDCHILD = """
import os, signal, sys, time
marks, parent = sys.argv[1], os.getppid()
def note(signum, frame):
    with open(marks, "a") as f:
        f.write(f"grandchild {signal.Signals(signum).name}\\n")
signal.signal(signal.SIGTERM, note)
with open(marks + ".grandchild", "w") as f:
    f.write(str(os.getpid()))
while os.getppid() == parent:  # ends with its parent, like a multiprocessing worker
    time.sleep(0.05)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # killed but not reaped yet (a container's init may be slow to reap)
        return "\tZ" in Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return True


@pytest.mark.parametrize("polite", [True, False])
def test_sigterm_goes_to_the_child_only_and_sigkill_to_its_whole_group(tmp_path, polite):
    """A child forwards SIGTERM to its own subprocesses (the actor to its workers): the launcher
    must not signal them too. A child that does not exit in time is killed with its group."""
    marks = tmp_path / "marks"
    argv = [PY, "-c", FAMILY_CHILD, str(marks), "polite" if polite else "stubborn", FAMILY_GRANDCHILD]
    out = io.StringIO()
    sup = Supervisor([ChildSpec("family", argv)], stop_timeout=1.0, console=Console(out))
    thread, result = run_in_thread(sup)
    grandchild = Path(f"{marks}.grandchild")
    wait_until(grandchild.exists)
    wait_until(lambda: grandchild.read_text().isdigit())
    sup.stop_requested.set()
    thread.join(10)
    assert result == [0]
    assert marks.read_text().split("\n")[:-1] == ["child SIGTERM"]  # the grandchild got nothing
    wait_until(lambda: _gone(int(grandchild.read_text())), timeout=5)
    assert sup.children[0].last_exit == (0 if polite else -signal.SIGKILL)
    assert ("family did not exit; SIGKILL" in out.getvalue()) is not polite


def test_main_prints_where_to_look_and_exits_when_training_is_done(tmp_path, capsys):
    def fake(cfg: LauncherConfig) -> list[ChildSpec]:
        return [
            ChildSpec("actor-1", sleeper(tmp_path / "actor")),
            ChildSpec("trainer", py("print('trained')"), finishes_run=True),
        ]

    code = main(["--data", str(tmp_path / "data"), "--no-dashboard", "--stop-timeout", "5"], build=fake)
    out = capsys.readouterr().out
    assert code == 0
    assert f"data in {(tmp_path / 'data').resolve()}" in out and "[trainer] trained" in out
    assert (tmp_path / "data" / "models").is_dir()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_the_launcher_reads_launcher_variables_and_leaves_trainer_ones_to_the_trainer(tmp_path, monkeypatch):
    seen: list[LauncherConfig] = []

    def fake(cfg: LauncherConfig) -> list[ChildSpec]:
        seen.append(cfg)
        return [ChildSpec("trainer", py("pass"), finishes_run=True)]

    args = ["--data", str(tmp_path), "--no-dashboard"]
    daemon_toml = tmp_path / "daemon.toml"
    daemon_toml.write_text("batch_size = 32\n")  # a daemon setting the launcher does not have
    for name, value in (
        ("TRAINER_THREADS", "2"),
        ("TRAINER_ENV_ID", "connect4"),
        ("TRAINER_ACTORS", "5"),
        ("TRAINER_CONFIG", str(daemon_toml)),
    ):
        monkeypatch.setenv(name, value)
    assert main(args, build=fake) == 0
    assert (seen[-1].threads, seen[-1].env_id, seen[-1].actors) == (1, "tictactoe", 2)
    monkeypatch.setenv("LAUNCHER_THREADS", "2")
    monkeypatch.setenv("LAUNCHER_ACTORS", "1")
    assert main(args, build=fake) == 0
    assert (seen[-1].threads, seen[-1].actors) == (2, 1)
    specs = {s.name: s for s in build_children(seen[-1], python="PY")}
    assert specs["actor-1"].argv[-2:] == ["--threads", "2"] and specs["actor-1"].env["OMP_NUM_THREADS"] == "2"


def test_main_refuses_a_busy_dashboard_port(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["--data", str(tmp_path), "--port", str(port)], build=lambda cfg: [])
    assert code == 1 and f"port 127.0.0.1:{port} is not free" in capsys.readouterr().err


# --- the real programs --------------------------------------------------------------------------
def test_stopping_an_actor_with_workers_signals_each_worker_once(tmp_path):
    """The actor forwards SIGTERM to its workers; a signal to its whole group as well would
    reach each worker twice, and a second signal means 'exit now, drop the games in flight'."""
    db = tmp_path / "replay.db"
    out = io.StringIO()
    actor = ChildSpec(
        "actor-1",
        [
            PY,
            "-m",
            "actor_stub",
            "--env-id",
            "tictactoe",
            "--db",
            str(db),
            "--model-dir",
            str(tmp_path / "models"),
            "--workers",
            "2",
            "--sims",
            "20",
            "--parallel-games",
            "4",
            "--actor-id",
            "t",
        ],
        {"PYTHONUNBUFFERED": "1"},
    )
    sup = Supervisor([actor], stop_timeout=20, console=Console(out))
    thread, result = run_in_thread(sup)
    try:
        # Both workers have written games, so both have games in flight when the signal comes.
        wait_until(lambda: {"t-w0", "t-w1"} <= _actor_ids(db), timeout=60)
    finally:
        sup.stop_requested.set()
        thread.join(30)
    log = out.getvalue()
    assert result == [0], log
    assert sup.children[0].last_exit == 0, log
    assert "exiting now" not in log and "while stopping" not in log, log
    assert "t-w0: done" in log and "t-w1: done" in log, log  # each finished its games
    games = read_games(db, "tictactoe")
    assert {episode.split("-ep-")[0] for episode in games} >= {"t-w0", "t-w1"}
    assert_whole_games(games, "tictactoe")


def _actor_ids(db: Path) -> set[str]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return {
                r[0].split("-ep-")[0] for r in conn.execute("SELECT DISTINCT episode_id FROM transitions")
            }
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet
        return set()


def test_actors_stop_before_the_trainer(tmp_path):
    order = tmp_path / "order"

    def child(name: str, stop_order: int) -> ChildSpec:
        return ChildSpec(
            name,
            py(f"""
            import signal, sys, time, pathlib
            def bye(*_):
                time.sleep(0.3)  # the next stage must wait for this one
                with open({str(order)!r}, "a") as f:
                    f.write({name!r} + "\\n")
                sys.exit(0)
            signal.signal(signal.SIGTERM, bye)
            pathlib.Path({str(order)!r} + ".{name}").write_text("ready")
            while True:
                time.sleep(0.05)
        """),
            stop_order=stop_order,
        )

    sup = Supervisor(
        [child("trainer", 1), child("actor-1", 0), child("actor-2", 0)],
        stop_timeout=5,
        console=Console(io.StringIO()),
    )
    thread, result = run_in_thread(sup)
    wait_until(lambda: all(Path(f"{order}.{n}").exists() for n in ("trainer", "actor-1", "actor-2")))
    t0 = time.monotonic()
    sup.stop_requested.set()
    thread.join(10)
    assert result == [0]
    lines = order.read_text().split()
    assert sorted(lines[:2]) == ["actor-1", "actor-2"] and lines[2] == "trainer"
    # Each stage ends when its children exit, not at --stop-timeout (5 s here).
    assert time.monotonic() - t0 < 4.0
    specs = {s.name: s for s in build_children(LauncherConfig(data=tmp_path, actors=2), python="PY")}
    assert specs["actor-1"].stop_order < specs["trainer"].stop_order == specs["dashboard"].stop_order


def test_json_console_keeps_every_line_one_json_object(tmp_path, monkeypatch):
    out = io.StringIO()
    console = Console(out, log_format="json")
    console.line("trainer", json.dumps({"level": "INFO", "logger": "trainer", "message": "step", "step": 5}))
    console.line("actor-1", "Traceback (most recent call last):")
    console.say("stopping")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["source"] for r in records] == ["trainer", "actor-1", "launcher"]
    assert records[0]["step"] == 5 and records[1]["message"].startswith("Traceback")
    monkeypatch.delenv("ACTOR_LOG_FORMAT", raising=False)
    monkeypatch.setenv("TRAINER_LOG_FORMAT", "text")  # a child's own setting wins
    specs = {
        s.name: s
        for s in build_children(LauncherConfig(data=tmp_path, actors=1, log_format="json"), python="PY")
    }
    assert (
        specs["actor-1"].env["ACTOR_LOG_FORMAT"] == "json"
        and "TRAINER_LOG_FORMAT" not in specs["trainer"].env
    )


def test_actors_get_their_own_metrics_ports(tmp_path, monkeypatch):
    def ports(**env):
        for key in ("ACTOR_METRICS_PORT", "ACTOR_WORKERS"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        specs = build_children(LauncherConfig(data=tmp_path, actors=3, dashboard=False), python="PY")
        return [
            s.argv[s.argv.index("--metrics-port") + 1] if "--metrics-port" in s.argv else None
            for s in specs
            if s.name.startswith("actor")
        ]

    assert ports() == [None, None, None]
    assert ports(ACTOR_METRICS_PORT="9101") == ["9101", "9102", "9103"]
    assert ports(ACTOR_METRICS_PORT="9101", ACTOR_WORKERS="2") == ["9101", "9103", "9105"]


def test_the_eval_hook_does_not_hold_up_the_daemons_stop(tmp_path, monkeypatch):
    """The launcher SIGKILLs a daemon that takes over --stop-timeout to stop; an evaluation
    in progress must not keep it from writing its final stats.json."""
    import trainer.evaluator.match as match
    from trainer.games import get_game
    from trainer.hooks.evaluate import STOP_WAIT_S, EvalHook

    real_make_player, ttt = match.make_player, get_game("tictactoe")
    moves, delay = threading.Event(), [1.0]  # a move of 1 s: an evaluation takes 4-5 s

    class SlowOpponent:
        name = "slow"

        def choose(self, states):
            moves.set()
            time.sleep(delay[0])
            return [int(ttt.legal_actions(s)[0]) for s in states]

    monkeypatch.setattr(
        match,
        "make_player",
        lambda spec, *a, **kw: SlowOpponent() if spec == "slow" else real_make_player(spec, *a, **kw),
    )
    publish(tmp_path, tiny_model_bytes("tictactoe", step=40))

    class Loop:
        def __init__(self):
            self.stop_event = threading.Event()

        @property
        def stopping(self):
            return self.stop_event.is_set()

    # Stopped from the outside (on_stop): gives up at the next move, nothing recorded.
    hook, loop = EvalHook(tmp_path, "tictactoe", every=1, games=10, opponent="slow"), Loop()
    hook.run(loop, {})
    assert moves.wait(10)
    t0 = time.monotonic()
    hook.on_stop(loop)
    assert time.monotonic() - t0 < min(STOP_WAIT_S, 2.0)
    assert not hook._thread.is_alive()
    stats = hook.stats()
    assert stats["last_eval"] is None and stats["eval_history"] == []

    # A signal sets the loop's stop event before any on_stop: the evaluation ends by itself.
    hook, loop = EvalHook(tmp_path, "tictactoe", every=1, games=10, opponent="slow"), Loop()
    moves.clear()
    hook.run(loop, {})
    assert moves.wait(10)
    loop.stop_event.set()
    hook._thread.join(2.0)
    assert not hook._thread.is_alive() and hook.stats()["eval_history"] == []

    # Not stopped: the same evaluation completes and is recorded.
    delay[0] = 0.0
    hook, loop = EvalHook(tmp_path, "tictactoe", every=1, games=2, opponent="slow"), Loop()
    hook.run(loop, {})
    hook._thread.join(30)
    assert hook.stats()["last_eval"]["step"] == 40 and hook.stats()["last_eval"]["games_played"] == 2


def _run_env(**settings: str) -> dict[str, str]:
    """The caller's TRAINER_*/ACTOR_*/LAUNCHER_* settings must not leak into the run under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINER_", "ACTOR_", "LAUNCHER_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **settings}


def _start_run(data: Path, log: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        # Its own session, as a shell gives a foreground job: killpg then is a terminal's Ctrl-C.
        return subprocess.Popen(
            [PY, "-m", "trainer", "run", "--no-dashboard", "--data", str(data), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_run(proc: subprocess.Popen, sig: int, timeout: float = 60) -> tuple[int | str, float]:
    t0 = time.monotonic()
    os.killpg(proc.pid, sig)
    try:
        code: int | str = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = "hung"
    return code, time.monotonic() - t0


def _run_until(
    data: Path, log: Path, env: dict[str, str], ready, what: str, sig: int, *args: str
) -> tuple[float, int | str, float]:
    """Start a run, wait for `ready()`, stop it with `sig`: (seconds to ready, exit code, seconds to stop)."""
    t0 = time.monotonic()
    proc = _start_run(data, log, env, *args)
    try:
        wait_for(ready, 180, what, proc, log.parent, log.name)
        ready_s = time.monotonic() - t0
        code, stop_s = _stop_run(proc, sig)
    finally:
        _kill_run(proc)
    return ready_s, code, stop_s


def _kill_run(proc: subprocess.Popen) -> None:
    """A run the test gave up on. The children are in their own process groups, out of reach
    of a SIGKILL to the launcher's: a second signal makes the launcher SIGKILL them."""
    if proc.poll() is None:
        for _ in range(2):
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.2)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# Stopping in these runs is measured, not only allowed: actors finishing their games, then
# the daemon's final step, checkpoint and model take about 2 s on an idle 2-core machine.
STOP_S = 10.0


def test_ctrl_c_stops_the_real_run_cleanly_and_the_next_run_resumes(tmp_path):
    from trainer.onnx_policy import OnnxPolicy

    data, latest = tmp_path / "data", tmp_path / "data" / "models" / "latest.onnx"
    # The first model sooner (all else as shipped): to stop and resume is what is under test.
    env = _run_env(TRAINER_CHECKPOINT_INTERVAL="20", TRAINER_MIN_ROWS="64", TRAINER_WAIT_INTERVAL="0.5")
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    published_s, code, stop_s = _run_until(
        data, first_log, env, latest.exists, "published model", signal.SIGINT
    )
    print(f"first run: model after {published_s:.1f} s, stopped in {stop_s:.1f} s")
    assert code == 0 and stop_s < STOP_S, (
        f"exit {code} after {stop_s:.1f} s:\n{tail_log(first_log.parent, first_log.name)}"
    )
    log = first_log.read_text()
    assert "did not exit; SIGKILL" not in log and "while stopping" not in log, tail_log(
        first_log.parent, first_log.name
    )
    stats = read_stats(data)
    assert stats["state"] == "stopped", stats.get("state_reason")
    first_step = stats["step"]
    assert first_step >= 20
    assert OnnxPolicy(latest, expected_env_id="tictactoe").step == first_step  # the final model
    games = read_games(data / "replay.db", "tictactoe")
    assert len(games) > 10
    assert_whole_games(games, "tictactoe")

    resumed_s, code, stop_s = _run_until(
        data,
        second_log,
        env,
        lambda: (read_stats(data) or {}).get("step", 0) > first_step,
        f"training beyond step {first_step}",
        signal.SIGINT,
    )
    print(f"second run: beyond step {first_step} after {resumed_s:.1f} s, stopped in {stop_s:.1f} s")
    assert code == 0 and stop_s < STOP_S, (
        f"exit {code} after {stop_s:.1f} s:\n{tail_log(second_log.parent, second_log.name)}"
    )
    resumed = [ln for ln in second_log.read_text().splitlines() if "resumed from" in ln]
    assert len(resumed) == 1 and f"at step {first_step} (" in resumed[0], resumed
    final = read_stats(data)
    assert final["state"] == "stopped" and final["step"] > first_step
    assert_whole_games(read_games(data / "replay.db", "tictactoe"), "tictactoe")


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_launcher_killed_outright_takes_its_children_along_and_the_next_run_resumes(tmp_path):
    data, first_log, second_log = tmp_path / "data", tmp_path / "first.log", tmp_path / "second.log"
    env = _run_env(TRAINER_CHECKPOINT_INTERVAL="20", TRAINER_MIN_ROWS="64", TRAINER_WAIT_INTERVAL="0.5")
    proc = _start_run(data, first_log, env)
    children: set[int] = set()
    try:
        # Both actors writing games and the trainer training: each child is using the data folder.
        wait_for(
            lambda: (read_stats(data) or {}).get("state") == "training",
            180,
            "training",
            proc,
            tmp_path,
            first_log.name,
        )
        children = _descendants(proc.pid)
        assert len(children) >= 3, children  # actor-1, actor-2, trainer (and what runs them)
        proc.kill()
        proc.wait()
        wait_for(lambda: all(_gone(pid) for pid in children), 30, "the children to exit")
    finally:
        for pid in children:  # what the fix is for, done by hand when it fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _kill_run(proc)
    # Each child stopped as on Ctrl-C: the trainer's last state and games are whole on disk.
    stats = read_stats(data)
    assert stats["state"] == "stopped", (stats.get("state_reason"), tail_log(tmp_path, first_log.name))
    assert_whole_games(read_games(data / "replay.db", "tictactoe"), "tictactoe")

    first_step = stats["step"]
    _, code, _ = _run_until(
        data,
        second_log,
        env,
        lambda: (read_stats(data) or {}).get("step", 0) > first_step,
        f"training beyond step {first_step}",
        signal.SIGINT,
    )
    assert code == 0, tail_log(tmp_path, second_log.name)
    assert f"at step {first_step} (" in second_log.read_text()


def test_connect4_through_the_launcher_publishes_a_model(tmp_path):
    from trainer.onnx_policy import OnnxPolicy

    data, latest, log = tmp_path / "data", tmp_path / "data" / "models" / "latest.onnx", tmp_path / "run.log"
    # Fewer simulations and an earlier first model keep this a smoke test of the wiring.
    env = _run_env(ACTOR_SIMS="8", TRAINER_CHECKPOINT_INTERVAL="10", TRAINER_MIN_ROWS="128")
    published_s, code, stop_s = _run_until(
        data, log, env, latest.exists, "published Connect Four model", signal.SIGTERM, "--env-id", "connect4"
    )
    print(f"connect4: first model after {published_s:.1f} s, stopped in {stop_s:.1f} s")
    assert code == 0 and stop_s < STOP_S, (
        f"exit {code} after {stop_s:.1f} s:\n{tail_log(log.parent, log.name)}"
    )
    policy = OnnxPolicy(latest, expected_env_id="connect4")
    assert policy.step >= 10
    stats = read_stats(data)
    assert stats["env_id"] == "connect4" and stats["state"] == "stopped"
    assert stats["total_steps"] == 0  # the launcher's choice for games beyond tic-tac-toe: until stopped
    text = log.read_text()
    assert "[actor-1]" in text and "[actor-2]" in text and "[trainer]" in text
    assert_whole_games(read_games(data / "replay.db", "connect4"), "connect4")
