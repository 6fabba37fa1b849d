"""docker-compose.yml's `postgres` profile and docker-compose.postgres.yml: a PostgreSQL 15
server that actor and trainer use instead of ./data/replay.db, validated by a real Compose."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from test_compose import REPO, compose_config, needs_compose, resolved_services

from trainer.games import get_game
from trainer.replay.postgres.writer import PgReplayWriter

BASE = REPO / "docker-compose.yml"
OVERRIDE = REPO / "docker-compose.postgres.yml"


def _healthcheck_text(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


@needs_compose
def test_the_postgres_override_points_actor_and_trainer_at_a_healthy_server():
    env = {"COMPOSE_PROFILES": "postgres", "POSTGRES_PASSWORD": "pw123", "TRAINER_ENV_ID": "connect4"}
    r = compose_config(BASE, env, overrides=(OVERRIDE,))
    assert r.returncode == 0, r.stderr
    services = resolved_services(r)
    pg = services["postgres"]
    assert pg["image"] == "postgres:15" and pg["profiles"] == ["postgres"]
    assert pg["environment"]["POSTGRES_PASSWORD"] == "pw123"
    assert "pg_isready" in _healthcheck_text(pg)
    # Data in a named volume, not in ./data (which the other services' user owns).
    assert [v["target"] for v in pg["volumes"]] == ["/var/lib/postgresql/data"]
    assert not pg["volumes"][0]["source"].startswith("/")
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in pg["ports"]] == [
        ("127.0.0.1", "5432", 5432)
    ]

    user, db = pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_DB"]
    url = f"postgresql://{user}:pw123@postgres:5432/{db}"
    actor, trainer = services["actor"], services["trainer"]
    assert actor["environment"]["ACTOR_DB"] == url and trainer["environment"]["TRAINER_DB"] == url
    assert "--db" not in actor["command"]  # a flag would win over ACTOR_DB
    for s in (actor, trainer):
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert trainer["depends_on"]["actor"]["condition"] == "service_healthy"
    # The actor's health is its game registered in PostgreSQL, not in a SQLite file.
    check = _healthcheck_text(actor)
    assert "psycopg" in check and "ACTOR_DB" in check and "'connect4'" in check and "sqlite" not in check


@needs_compose
def test_without_the_override_the_replay_stays_sqlite():
    r = compose_config(BASE, {"COMPOSE_PROFILES": "postgres"})
    assert r.returncode == 0, r.stderr
    services = resolved_services(r)
    assert services["actor"]["environment"]["ACTOR_DB"] == "/data/replay.db"
    assert services["trainer"]["environment"]["TRAINER_DB"] == "/data/replay.db"
    assert "postgres" not in (services["trainer"].get("depends_on") or {})


def test_the_image_installs_the_postgresql_driver():
    """The Dockerfile's dependency list, computed as its RUN line computes it."""
    text = (REPO / "Dockerfile").read_text()
    code = re.search(r'^RUN python -c "(.*?)" > /tmp/requirements.txt', text, re.MULTILINE)
    assert code, "the Dockerfile's requirements line"
    r = subprocess.run([sys.executable, "-c", code.group(1)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert any(line.startswith("psycopg") for line in r.stdout.splitlines())


@needs_compose
def test_the_actor_turns_healthy_once_its_game_is_in_postgres(pg_url):
    """The trainer waits for this check: run it, as compose resolves it, against a real server."""
    r = compose_config(
        BASE, {"COMPOSE_PROFILES": "postgres", "TRAINER_ENV_ID": "connect4"}, overrides=(OVERRIDE,)
    )
    assert r.returncode == 0, r.stderr
    test = resolved_services(r)["actor"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]

    def healthy() -> bool:
        env = {**os.environ, "ACTOR_DB": pg_url}
        return (
            subprocess.run(
                [sys.executable, "-c", test[3]], env=env, capture_output=True, timeout=30
            ).returncode
            == 0
        )

    assert not healthy()  # no tables yet
    PgReplayWriter(pg_url, get_game("tictactoe")).close()
    assert not healthy()  # another game's actor
    PgReplayWriter(pg_url, get_game("connect4")).close()
    assert healthy()
