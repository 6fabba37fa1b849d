"""Dashboard server, without a browser: what it serves, what it refuses, bad stats files."""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.dashboard.server import read_stats, serve_in_thread

REPO = Path(__file__).resolve().parents[1]


def sample_stats(step: int = 1200, total_steps: int = 5000, n_history: int = 300,
                 n_eval: int = 12, extras: bool = True) -> dict:
    """A stats.json as the contract (section 4) and the daemon's extra keys describe it."""
    history = []
    for i in range(n_history):
        s = int(step * (i + 1) / n_history)
        p = 2.2 * math.exp(-s / 1500) + 0.9
        v = 0.5 * math.exp(-s / 2000) + 0.15
        lr = 2e-3 * min(1.0, s / 100) * (0.55 + 0.45 * math.cos(math.pi * s / total_steps))
        history.append({"step": s, "total_loss": p + v, "policy_loss": p, "value_loss": v,
                        "learning_rate": lr})
    evals = []
    for i in range(n_eval):
        s = int(step * (i + 1) / n_eval)
        w = min(0.95, 0.55 + 0.035 * i)
        d = min(0.04, 1 - w) if i > 6 else 0.1
        evals.append({"step": s, "win_rate": w, "draw_rate": d, "loss_rate": round(1 - w - d, 6),
                      "games_played": 50, "avg_game_length": 7.1 - 0.05 * i,
                      "timestamp": time.time() - 60 * (n_eval - i)})
    stats = {
        "step": step, "total_steps": total_steps,
        "total_loss": history[-1]["total_loss"] if history else 0.0,
        "policy_loss": history[-1]["policy_loss"] if history else 0.0,
        "value_loss": history[-1]["value_loss"] if history else 0.0,
        "learning_rate": history[-1]["learning_rate"] if history else 0.0,
        "samples_seen": step * 256, "replay_buffer_size": 48211,
        "last_checkpoint": f"./data/models/model_step_{step:06d}.onnx",
        "timestamp": time.time(), "env_id": "tictactoe",
        "history": history, "last_eval": evals[-1] if evals else None, "eval_history": evals,
    }
    if extras:
        stats.update({
            "state": "training", "state_reason": "training on 20000 of 48211 rows",
            "samples_per_sec": 5123.4, "steps_per_sec": 20.01, "wait_fraction": 0.125,
            "window_size": 20000, "rows_seen": 48211, "new_rows_per_sec": 310.5,
            "reuse_ratio": 3.2, "policy_entropy": 1.234, "grad_norm": 0.87,
            "last_publish_seconds": 0.42, "publish_failures": 0, "bad_rows": 3,
            "rss_mb": 512.3, "trainer_version": "0.1.0", "newest_row_age_s": 1.5,
            "actor_model_step": step - 200, "mode": "daemon",
            "metrics": {"val_loss": 1.01, "val_accuracy": 0.62},
        })
    return stats


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


@pytest.fixture
def served(tmp_path):
    stats = tmp_path / "data" / "stats.json"
    stats.parent.mkdir()
    server = serve_in_thread(stats)
    yield server, stats
    server.shutdown()
    server.server_close()


def request(server, path: str, method: str = "GET", raw: bool = False):
    """(status, headers, body); `raw` sends the path byte for byte, unnormalised."""
    host, port = server.server_address[:2]
    if raw:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1"))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), head.decode("latin-1"), body
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request(method, path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def test_serves_page_assets_and_stats(served):
    server, stats = served
    write_json(stats, sample_stats())
    status, headers, body = request(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/dashboard.js" in body and b"http" not in body.replace(b"http-equiv", b"")  # no CDN
    assert headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path, ctype in (("/index.html", "text/html"), ("/dashboard.js", "text/javascript"),
                        ("/dashboard.css", "text/css")):
        status, headers, body = request(server, path)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body
    status, headers, body = request(server, "/stats.json?t=123")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["step"] == 1200
    status, headers, body = request(server, "/stats.json", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_health(served):
    server, stats = served
    status, _, body = request(server, "/api/health")
    assert status == 200 and json.loads(body)["stats"] == "missing"
    write_json(stats, sample_stats())
    health = json.loads(request(server, "/api/health")[2])
    assert health["ok"] is True and health["stats"] == "ok"


@pytest.mark.parametrize("path", [
    "/../stats.json", "/..%2fstats.json", "/%2e%2e/%2e%2e/etc/passwd", "/%2E%2E%2Fetc%2Fpasswd",
    "/static/../../../../etc/passwd", "/etc/passwd", "//etc/passwd", "/data/stats.json",
    "/replay.db", "/models/latest.onnx", "/secret.txt", "/stats.json/", "/stats.json%00",
    "/dashboard.js/..", "/server.py", "/static/index.html", "/%ff%fe", "/.%2e/secret.txt",
    "http://evil/secret.txt", "/index.html/../secret.txt",
])
def test_serves_nothing_else(served, path):
    server, stats = served
    write_json(stats, sample_stats())
    data = stats.parent
    (data / "secret.txt").write_text("SECRET")
    (data / "replay.db").write_bytes(b"SQLite format 3\0")
    (data / "models").mkdir()
    (data / "models" / "latest.onnx").write_bytes(b"ONNX")
    status, _, body = request(server, path, raw=True)
    assert status in (400, 403, 404), (path, status)
    assert b"SECRET" not in body and b"root:" not in body and b"SQLite" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_read_only(served, method):
    server, stats = served
    write_json(stats, sample_stats())
    before = stats.read_bytes()
    status, _, _ = request(server, "/stats.json", method=method)
    assert status == 405 and stats.read_bytes() == before


def test_missing_and_half_written_stats_are_503_then_recover(served):
    server, stats = served
    status, headers, body = request(server, "/stats.json")
    assert status == 503 and json.loads(body)["status"] == "missing"
    assert headers["Retry-After"] == "2"

    full = json.dumps(sample_stats())
    stats.write_text(full[: len(full) // 2])  # a writer that does not rename atomically
    status, _, body = request(server, "/stats.json")
    assert status == 503 and json.loads(body)["status"] == "unreadable"
    for junk in (b"", b"[1, 2]", b"\xff\xfe garbage", b"null"):
        stats.write_bytes(junk)
        assert request(server, "/stats.json")[0] == 503

    stats.write_text(full)
    status, _, body = request(server, "/stats.json")
    assert status == 200 and json.loads(body)["total_steps"] == 5000


def test_non_finite_numbers_become_null(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text('{"step": 3, "total_loss": NaN, "history": [{"step": 1, "value_loss": Infinity}]}')
    result = read_stats(path)
    assert result.status == "ok"
    obj = json.loads(result.body)  # strict parse, as a browser does
    assert obj == {"step": 3, "total_loss": None, "history": [{"step": 1, "value_loss": None}]}


def test_directory_in_place_of_stats(tmp_path):
    (tmp_path / "stats.json").mkdir()
    assert read_stats(tmp_path / "stats.json").status == "unreadable"


def test_cli_binds_loopback_by_default_and_stops_on_sigterm(tmp_path):
    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats(extras=False))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.dashboard", "--data", str(tmp_path), "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:"), line + proc.stderr.read()
        port = int(line.split(":")[3].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/stats.json")
        assert conn.getresponse().status == 200
        conn.close()
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
