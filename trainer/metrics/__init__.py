"""Prometheus metrics of the daemon and the actor, named like the Rust trainer and actor of
this family so that existing Grafana dashboards and alerts work unchanged.

`exporter.py` serves a registry on `--metrics-host:--metrics-port`; `trainer_metrics.py` and
`actor_metrics.py` declare each program's metrics in one place.
"""
