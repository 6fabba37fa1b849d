"""`python -m trainer run`: the whole self-play loop from one command, supervised.

Starts the actor process(es), the training daemon and the dashboard as child processes on
one data folder, and keeps them running:

* Each child gets one compute thread (OMP_NUM_THREADS=1, `--threads 1`): on a
  2-core machine an actor and the trainer each want a core, and two thread pools of two
  threads each would fight over both.
* A child that exits is restarted after a delay that doubles with each consecutive failure
  (`--restart-delay` up to `--max-restart-delay`); a run that lasted `--healthy-after`
  seconds resets the count. A child that fails `--max-quick-failures` times in a row, each
  time within `--healthy-after` seconds, has a problem a restart will not fix (a bad flag,
  a missing file): an actor or the trainer then stops the whole run (exit 1), the dashboard
  is just left stopped.
* The trainer exiting 0 means it reached `--steps`: the actors are stopped, the dashboard
  keeps serving the final numbers until Ctrl-C (or the launcher exits 0 at once with
  `--no-dashboard`).
* Ctrl-C or SIGTERM: the children are stopped in order, the actors first, then the trainer
  and the dashboard, so the trainer is still tailing the replay while the actors write their
  last games, and its final checkpoint and model come after them. Each child gets SIGTERM, to
  its own pid only (an actor forwards it to its worker processes; sent to the whole group,
  it would reach each worker twice, and a second signal means "drop the games in flight"),
  and `--stop-timeout` seconds to finish (the daemon writes its checkpoint); then its whole
  process group gets SIGKILL. Exit 0. A second Ctrl-C skips the waits. Stopping usually
  takes a second or two; at worst each stage waits its full `--stop-timeout`.

Children run in their own process groups, so a Ctrl-C in the terminal reaches only the
launcher, which then stops them as above. Their output is shown line by line, prefixed
with the child's name. A launcher killed outright (SIGKILL, the OOM killer) cannot stop
them: on Linux each child runs under a small watcher (`trainer/parent_death.py`) that then
sends it one SIGTERM, so it stops as above by itself and no orphan keeps writing into the
data folder.

The launcher's own settings come from flags, `LAUNCHER_*` variables or `--config`
(`LAUNCHER_CONFIG`); `TRAINER_*` variables are left to the trainer child and `ACTOR_*` to
the actors.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from trainer import parent_death
from trainer.config.loader import load_config
from trainer.dashboard.server import dashboard_url
from trainer.logging_setup import LogFormat
from trainer.model.contract import LATEST_MODEL_NAME
from trainer.replay.backend import ReplayLocation, is_postgres_url
from trainer.runtime import StopFlag

ENV_PREFIX = "LAUNCHER_"


class LauncherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env_id: str = Field("tictactoe", min_length=1, description="Game the actors play and the trainer learns.")
    data: Path = Field(Path("./data"), description="Data folder: replay.db, models/, stats.json.")
    db: ReplayLocation | None = Field(
        None,
        description="Replay: a SQLite file (unset = <data>/replay.db) or a postgresql://user:password@host:port/database URL that remote actors write too.",
    )
    port: int = Field(8080, ge=1, le=65535, description="Dashboard port.")
    log_format: LogFormat = "text"
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Dashboard address to bind (127.0.0.1 keeps it on this machine).",
    )
    # 2, not 1: on tic-tac-toe the trainer mostly waits for data beside one actor, so a
    # second actor on a 2-core machine nearly doubles the data and shortens the time to a
    # perfect greedy policy (benchmarks/time_to_strength.py).
    actors: int = Field(2, ge=0, le=1024, description="Actor processes writing self-play games.")
    steps: int | None = Field(
        None,
        ge=0,
        description="Trainer's target step (its --steps); unset = the trainer's default for tictactoe, 0 (until stopped) for other games.",
    )
    # Tic-tac-toe's 5,478 positions cannot be over-fitted by re-reading a window, and the
    # actors are the bottleneck: at the daemon's 4 the trainer waits for data most of the
    # time, and 16 reaches a perfect greedy policy sooner (benchmarks/time_to_strength.py).
    max_reuse: float | None = Field(
        None,
        ge=0,
        description="Trainer's --max-reuse; unset = 16 for tictactoe, the trainer's default (4) otherwise.",
    )
    # 1: the actors and the trainer already share the cores, and more threads per process
    # only make them compete (Connect Four trained further in the same time with 1).
    threads: int = Field(
        1,
        gt=0,
        le=1024,
        description="Compute threads per child (OMP_NUM_THREADS and the actor's and trainer's --threads).",
    )
    dashboard: bool = Field(True, description="Run the dashboard (--no-dashboard to skip it).")
    restart_delay: float = Field(
        1.0,
        gt=0,
        description="Seconds before the first restart of a crashed child; doubles per consecutive crash.",
    )
    max_restart_delay: float = Field(30.0, gt=0, description="Upper bound of the restart delay in seconds.")
    healthy_after: float = Field(
        30.0, ge=0, description="A child that ran this long (s) before exiting starts its crash count afresh."
    )
    max_quick_failures: int = Field(
        5, ge=0, description="Consecutive quick crashes before giving up on a child; 0 = never give up."
    )
    stop_timeout: float = Field(
        20.0,
        ge=0,
        description="Seconds each stage of stopping (actors, then trainer and dashboard) gets to exit after SIGTERM before SIGKILL.",
    )


@dataclass
class ChildSpec:
    """One supervised command. `argv` is all a test needs to swap to make a fake child."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    essential: bool = True  # giving up on it stops the run
    finishes_run: bool = False  # exit 0 means the run is complete (the trainer at --steps)
    outlives_run: bool = False  # keeps running after the run is complete (the dashboard)
    stop_order: int = 0  # stopping goes by ascending order, each stage after the last


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = 0.0  # when to (re)start; None = not to be started again
    failures: int = 0  # consecutive quick failures
    starts: int = 0
    finished: bool = False  # exited 0 as a `finishes_run` child
    last_exit: int | None = None  # exit code of the latest run (negative: killed by that signal)


class Console:
    """Serialises whole lines from the launcher and every child onto one stdout.

    As text, each line is prefixed with its source. As JSON (`--log-format json`), every
    line stays one JSON object a shipper can parse: a child's own JSON record gains a
    `source` field, any other line (a traceback, a child's plain output) is wrapped.
    """

    def __init__(self, stream=None, log_format: str = "text"):
        self.stream = stream if stream is not None else sys.stdout
        self.log_format = log_format
        self.lock = threading.Lock()

    def _json_line(self, source: str, text: str) -> str:
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "level": "INFO",
                "logger": source,
                "message": text,
            }
        record.setdefault("source", source)
        return json.dumps(record, ensure_ascii=False)

    def line(self, prefix: str, text: str) -> None:
        out = (
            self._json_line(prefix.split(" ")[0], text) if self.log_format == "json" else f"[{prefix}] {text}"
        )
        with self.lock:
            try:
                self.stream.write(out + "\n")
                self.stream.flush()
            except (ValueError, OSError):
                pass  # stdout closed under us (a pipe reader went away): nothing to do

    def say(self, text: str) -> None:
        self.line("launcher " + time.strftime("%H:%M:%S"), text)

    def pump(self, prefix: str, pipe) -> None:
        for raw in iter(pipe.readline, b""):
            self.line(prefix, raw.decode(errors="replace").rstrip("\n"))
        pipe.close()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        restart_delay: float = 1.0,
        max_restart_delay: float = 30.0,
        healthy_after: float = 30.0,
        max_quick_failures: int = 5,
        stop_timeout: float = 20.0,
        console: Console | None = None,
        on_finished: Callable[[], None] | None = None,
    ):
        self.children = [_Child(spec) for spec in specs]
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.healthy_after = healthy_after
        self.max_quick_failures = max_quick_failures
        self.stop_timeout = stop_timeout
        self.console = console or Console()
        self.on_finished = on_finished
        self.stop_requested = StopFlag()  # set by a signal handler or a test
        self.force = StopFlag()  # a second Ctrl-C: skip the grace period
        self.run_finished = False
        self.stop_reason = ""

    # --- starting and watching ----------------------------------------------------------------
    def _start(self, child: _Child) -> None:
        spec = child.spec
        try:
            child.proc = subprocess.Popen(
                # Under parent_death's watcher: a launcher killed outright takes its children along.
                parent_death.wrap(spec.argv),
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,  # Ctrl-C reaches the launcher only; see the module docstring
            )
        except OSError as exc:
            self.console.say(f"{spec.name}: cannot start {spec.argv[0]!r}: {exc}")
            child.proc = None
            child.started_at = time.monotonic()
            self._after_exit(child, 127)
            return
        child.started_at = time.monotonic()
        child.restart_at = None
        child.starts += 1
        threading.Thread(
            target=self.console.pump,
            args=(spec.name, child.proc.stdout),
            name=f"output-{spec.name}",
            daemon=True,
        ).start()
        if child.starts > 1:
            self.console.say(f"{spec.name} restarted (pid {child.proc.pid}, start #{child.starts})")

    def _after_exit(self, child: _Child, code: int) -> None:
        spec = child.spec
        uptime = time.monotonic() - child.started_at
        child.proc = None
        child.last_exit = code
        if code == 0 and spec.finishes_run:
            child.finished = True
            child.restart_at = None
            self.console.say(f"{spec.name} finished (exit 0 after {uptime:.1f} s)")
            return
        child.failures = 1 if uptime >= self.healthy_after else child.failures + 1
        what = f"{spec.name} {_describe_exit(code)} after {uptime:.1f} s"
        if (
            self.max_quick_failures
            and child.failures >= self.max_quick_failures
            and uptime < self.healthy_after
        ):
            child.restart_at = None
            verdict = "stopping the run" if spec.essential else "leaving it stopped"
            self.console.say(f"{what}; {child.failures} quick failures in a row, giving up: {verdict}")
            if spec.essential:
                raise _GiveUp(spec.name)
            return
        delay = min(self.max_restart_delay, self.restart_delay * 2 ** (child.failures - 1))
        child.restart_at = time.monotonic() + delay
        self.console.say(f"{what}; restarting in {delay:.1f} s (failure {child.failures} in a row)")

    def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None:
                code = child.proc.poll()
                if code is not None:
                    self._after_exit(child, code)
            elif child.restart_at is not None and now >= child.restart_at:
                self._start(child)
        if not self.run_finished and any(c.finished for c in self.children):
            self.run_finished = True
            self._finish_run()

    def _finish_run(self) -> None:
        ending = [c for c in self.children if not c.spec.outlives_run]
        self._stop_children(ending)
        if self.on_finished:
            self.on_finished()

    def run(self) -> int:
        """Start every child and supervise until stopped; returns the launcher's exit code."""
        code = 0
        try:
            for child in self.children:
                self._start(child)
            while not self.stop_requested.is_set():
                self._tick()
                if self.run_finished and not any(
                    c.proc is not None or c.restart_at is not None for c in self.children
                ):
                    break  # nothing left to watch (no dashboard kept running)
                self.stop_requested.wait(0.05)
            if self.stop_reason:
                self.console.say(f"{self.stop_reason}: stopping (again to skip the wait)")
        except _GiveUp:
            code = 1
        finally:
            self._stop_children(self.children)
        return code

    # --- stopping -------------------------------------------------------------------------------
    def _signal(self, child: _Child, sig: int, *, group: bool = False) -> None:
        """`group`: the child's whole process group, its own subprocesses too."""
        if child.proc is None or child.proc.poll() is not None:
            return
        try:
            if group:
                os.killpg(child.proc.pid, sig)
            else:
                child.proc.send_signal(sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            child.proc.send_signal(sig)

    def _stop_children(self, children: Sequence[_Child]) -> None:
        for child in children:
            child.restart_at = None
        for order in sorted({c.spec.stop_order for c in children}):
            self._stop_stage([c for c in children if c.spec.stop_order == order])

    def _stop_stage(self, children: Sequence[_Child]) -> None:
        running = [c for c in children if c.proc is not None and c.proc.poll() is None]
        if not running:
            return
        names = ", ".join(c.spec.name for c in running)
        self.console.say(f"stopping {names} (SIGTERM, up to {self.stop_timeout:g} s)")
        for child in running:
            # Its own pid only: each program forwards the signal to its own workers.
            self._signal(child, signal.SIGTERM)
        killed: set[str] = set()
        deadline = time.monotonic() + self.stop_timeout
        while any(c.proc.poll() is None for c in running):
            if time.monotonic() >= deadline or self.force.is_set():
                for child in running:
                    if child.proc.poll() is None:
                        self.console.say(f"{child.spec.name} did not exit; SIGKILL")
                        killed.add(child.spec.name)
                        self._signal(child, signal.SIGKILL, group=True)
                for child in running:
                    child.proc.wait()
                break
            time.sleep(0.05)
        for child in running:
            child.last_exit = code = child.proc.returncode
            if code != 0 and child.spec.name not in killed:
                self.console.say(f"{child.spec.name} {_describe_exit(code)} while stopping")
            child.proc = None


class _GiveUp(Exception):
    pass


# --- the run's command lines -------------------------------------------------------------------
def child_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "PYTHONUNBUFFERED": "1"}


def actor_metrics_port(index: int) -> list[str]:
    """Each actor its own metrics ports: one ACTOR_METRICS_PORT shared by all would make every
    actor after the first fail to bind. An actor's worker w serves on its port + w."""
    base, workers = os.environ.get("ACTOR_METRICS_PORT", ""), os.environ.get("ACTOR_WORKERS", "1")
    if not base.strip().isdigit() or int(base) == 0:
        return []
    stride = int(workers) if workers.strip().isdigit() and int(workers) > 0 else 1
    return ["--metrics-port", str(int(base) + index * stride)]


def build_children(cfg: LauncherConfig, python: str = sys.executable) -> list[ChildSpec]:
    data = cfg.data.expanduser().resolve()
    db, models, stats = cfg.db or str(data / "replay.db"), data / "models", data / "stats.json"
    env = child_env(cfg.threads)
    if cfg.log_format != "text":  # a child's own variable, if the user set one, still wins
        env.update(
            {
                f"{prefix}LOG_FORMAT": cfg.log_format
                for prefix in ("ACTOR_", "TRAINER_", "DASHBOARD_")
                if f"{prefix}LOG_FORMAT" not in os.environ
            }
        )
    # A URL goes by environment, not argv: its password would show in every `ps`.
    db_arg, actor_env, trainer_env = ["--db", db], env, env
    if is_postgres_url(db):
        db_arg, actor_env, trainer_env = [], {**env, "ACTOR_DB": db}, {**env, "TRAINER_DB": db}
    specs = [
        ChildSpec(
            f"actor-{i + 1}",
            [
                python,
                "-m",
                "actor_stub",
                "--env-id",
                cfg.env_id,
                *db_arg,
                "--model-dir",
                str(models),
                "--threads",
                str(cfg.threads),
                *actor_metrics_port(i),
            ],
            actor_env,
        )
        for i in range(cfg.actors)
    ]
    trainer = [
        python,
        "-m",
        "trainer",
        "train",
        *db_arg,
        "--model-dir",
        str(models),
        "--stats",
        str(stats),
        "--env-id",
        cfg.env_id,
        "--threads",
        str(cfg.threads),
    ]
    # A TRAINER_* variable the user set is the trainer's to read; only fill in what is unset.
    steps = cfg.steps
    if steps is None and cfg.env_id != "tictactoe" and "TRAINER_STEPS" not in os.environ:
        steps = 0  # bigger games keep improving for hours: run until stopped
    if steps is not None:
        trainer += ["--steps", str(steps)]
    max_reuse = cfg.max_reuse
    if max_reuse is None and cfg.env_id == "tictactoe" and "TRAINER_MAX_REUSE" not in os.environ:
        max_reuse = 16.0
    if max_reuse is not None:
        trainer += ["--max-reuse", f"{max_reuse:g}"]
    specs.append(ChildSpec("trainer", trainer, trainer_env, finishes_run=True, stop_order=1))
    if cfg.dashboard:
        specs.append(
            ChildSpec(
                "dashboard",
                [
                    python,
                    "-m",
                    "trainer.dashboard",
                    "--data",
                    str(data),
                    "--stats",
                    str(stats),
                    "--host",
                    cfg.host,
                    "--port",
                    str(cfg.port),
                ],
                env,
                essential=False,
                outlives_run=True,
                stop_order=1,
            )
        )
    return specs


def _port_in_use(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def supervise(supervisor: Supervisor) -> int:
    """Run a supervisor with Ctrl-C/SIGTERM handling; restores the signal handlers after."""

    def on_signal(signum: int, frame) -> None:
        # Only flags here, no lock: the main thread may hold it (the console's, an Event's).
        if supervisor.stop_requested.is_set():
            supervisor.force.set()
        else:
            supervisor.stop_reason = signal.Signals(signum).name
            supervisor.stop_requested.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return supervisor.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(
    argv: Sequence[str] | None = None, build: Callable[[LauncherConfig], list[ChildSpec]] = build_children
) -> int:
    # LAUNCHER_*, not TRAINER_*: the daemon's variables (TRAINER_THREADS, TRAINER_CONFIG, ...)
    # are the trainer child's to read, and must not change what the actors get.
    cfg = load_config(
        LauncherConfig,
        argv,
        prog="python -m trainer run",
        env_prefix=ENV_PREFIX,
        description="Run actors, the training daemon and the dashboard together, supervised.",
    )
    console = Console(log_format=cfg.log_format)
    data = cfg.data.expanduser().resolve()
    try:
        (data / "models").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the data folder {data}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if cfg.dashboard:
        problem = _port_in_use(cfg.host, cfg.port)
        if problem:
            print(
                f"error: dashboard port {cfg.host}:{cfg.port} is not free ({problem}); "
                f"pass --port or --no-dashboard",
                file=sys.stderr,
            )
            return 1
    specs = build(cfg)
    url = dashboard_url(cfg.host, cfg.port)
    console.say(f"self-play run: {cfg.env_id}, {cfg.actors} actor(s), data in {data}")
    if cfg.dashboard:
        console.say(f"dashboard:  {url}")
    console.say(f"stats:      {data / 'stats.json'}")
    console.say(f"models:     {data / 'models' / LATEST_MODEL_NAME}")
    console.say("Ctrl-C stops everything (the trainer saves its checkpoint first)")

    def finished() -> None:
        if cfg.dashboard:
            console.say(f"training finished; the dashboard stays at {url} until Ctrl-C")

    supervisor = Supervisor(
        specs,
        restart_delay=cfg.restart_delay,
        max_restart_delay=cfg.max_restart_delay,
        healthy_after=cfg.healthy_after,
        max_quick_failures=cfg.max_quick_failures,
        stop_timeout=cfg.stop_timeout,
        console=console,
        on_finished=finished,
    )
    code = supervise(supervisor)
    console.say("all children stopped" + ("" if code == 0 else f"; exit {code}"))
    return code


if __name__ == "__main__":
    sys.exit(main())
