"""docker-compose.yml's `metrics` profile: a Prometheus (official image) scraping the trainer
and the actor with deploy/prometheus.yml, validated by a real Compose implementation."""

from __future__ import annotations

import pytest
from test_compose import REPO, compose_config, needs_compose, resolved_services


@needs_compose
def test_the_metrics_profile_scrapes_trainer_and_actor_where_they_serve():
    yaml = pytest.importorskip("yaml")
    r = compose_config(
        REPO / "docker-compose.yml", {"COMPOSE_PROFILES": "metrics", "PROMETHEUS_PORT": "9999"}
    )
    assert r.returncode == 0, r.stderr
    services = resolved_services(r)
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:") and prom["profiles"] == ["metrics"]
    assert [(v["source"], v["target"], v.get("read_only")) for v in prom["volumes"]] == [
        (str(REPO / "deploy" / "prometheus.yml"), "/etc/prometheus/prometheus.yml", True)
    ]
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in prom["ports"]] == [
        ("127.0.0.1", "9999", 9090)
    ]

    trainer, actor = services["trainer"]["environment"], services["actor"]["environment"]
    serving = {
        "trainer": f"trainer:{trainer['TRAINER_METRICS_PORT']}",
        "actor": f"actor:{actor['ACTOR_METRICS_PORT']}",
    }
    # Reachable from the Prometheus container, yet not published on the host.
    assert trainer["TRAINER_METRICS_HOST"] == actor["ACTOR_METRICS_HOST"] == "0.0.0.0"
    assert not services["trainer"].get("ports") and not services["actor"].get("ports")
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in scrape["scrape_configs"]
    }
    assert targets == {job: [target] for job, target in serving.items()}


@needs_compose
def test_metrics_ports_follow_the_environment():
    r = compose_config(REPO / "docker-compose.yml", {"TRAINER_METRICS_PORT": "0", "ACTOR_METRICS_PORT": "0"})
    assert r.returncode == 0, r.stderr
    services = resolved_services(r)
    assert services["trainer"]["environment"]["TRAINER_METRICS_PORT"] == "0"  # 0 turns it off
    assert services["actor"]["environment"]["ACTOR_METRICS_PORT"] == "0"
