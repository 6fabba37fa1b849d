"""Serving a metrics registry over HTTP (`/metrics`), with one clear error for a busy port."""

from __future__ import annotations

import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from trainer.config.loader import ConfigError

log = logging.getLogger(__name__)


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, setting: str = "--metrics-port"
) -> WSGIServer:
    """Start the exporter's daemon thread; a port that cannot be bound exits 2 naming `setting`."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"{setting} {port}: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    log.info("Prometheus metrics on http://%s:%d/metrics", host, server.server_port)
    return server
