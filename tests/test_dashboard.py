"""Dashboard server, without a browser: what it serves, what it refuses, bad stats files."""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trainer.dashboard.server import read_stats, serve_in_thread

REPO = Path(__file__).resolve().parents[1]


def sample_stats(
    step: int = 1200, total_steps: int = 5000, n_history: int = 300, n_eval: int = 12, extras: bool = True
) -> dict:
    """A stats.json as docs/contract.md section 4 (contract keys and additions) describes it."""
    history = []
    for i in range(n_history):
        s = int(step * (i + 1) / n_history)
        p = 2.2 * math.exp(-s / 1500) + 0.9
        v = 0.5 * math.exp(-s / 2000) + 0.15
        lr = 2e-3 * min(1.0, s / 100) * (0.55 + 0.45 * math.cos(math.pi * s / total_steps))
        history.append(
            {"step": s, "total_loss": p + v, "policy_loss": p, "value_loss": v, "learning_rate": lr}
        )
    evals = []
    for i in range(n_eval):
        s = int(step * (i + 1) / n_eval)
        w = min(0.95, 0.55 + 0.035 * i)
        d = min(0.04, 1 - w) if i > 6 else 0.1
        evals.append(
            {
                "step": s,
                "win_rate": w,
                "draw_rate": d,
                "loss_rate": round(1 - w - d, 6),
                "games_played": 50,
                "avg_game_length": 7.1 - 0.05 * i,
                "timestamp": time.time() - 60 * (n_eval - i),
            }
        )
    stats = {
        "step": step,
        "total_steps": total_steps,
        "total_loss": history[-1]["total_loss"] if history else 0.0,
        "policy_loss": history[-1]["policy_loss"] if history else 0.0,
        "value_loss": history[-1]["value_loss"] if history else 0.0,
        "learning_rate": history[-1]["learning_rate"] if history else 0.0,
        "samples_seen": step * 256,
        "replay_buffer_size": 48211,
        "last_checkpoint": f"./data/models/model_step_{step:06d}.onnx",
        "timestamp": time.time(),
        "env_id": "tictactoe",
        "history": history,
        "last_eval": evals[-1] if evals else None,
        "eval_history": evals,
    }
    if extras:
        stats.update(
            {
                "state": "training",
                "state_reason": "training on 20000 of 48211 rows",
                "samples_per_sec": 5123.4,
                "steps_per_sec": 20.01,
                "wait_fraction": 0.125,
                "window_size": 20000,
                "rows_seen": 48211,
                "new_rows_per_sec": 310.5,
                "reuse_ratio": 3.2,
                "policy_entropy": 1.234,
                "grad_norm": 0.87,
                "last_publish_seconds": 0.42,
                "publish_failures": 0,
                "bad_rows": 3,
                "rss_mb": 512.3,
                "trainer_version": "0.1.0",
                "newest_row_age_s": 1.5,
                "actor_model_step": step - 200,
                "mode": "daemon",
                "metrics": {"val_loss": 1.01, "val_accuracy": 0.62},
            }
        )
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


def request(server, path: str, method: str = "GET", raw: bool = False, host_headers: list[str] | None = None):
    """(status, headers, body); `raw` sends the path byte for byte, unnormalised, with
    `host_headers` as the Host lines (default: the bound address and port)."""
    host, port = server.server_address[:2]
    if host == "0.0.0.0":
        host = "127.0.0.1"
    if raw or host_headers is not None:
        if host_headers is None:
            host_headers = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        lines = "".join(f"Host: {h}\r\n" for h in host_headers)
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(f"{method} {path} HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode("latin-1"))
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
    for path, ctype in (
        ("/index.html", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ):
        status, headers, body = request(server, path)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body
    status, headers, body = request(server, "/stats.json?t=123")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["step"] == 1200
    status, headers, body = request(server, "/stats.json", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


def test_health_names_no_path(served):
    server, stats = served
    status, _, body = request(server, "/api/health")
    assert status == 200 and json.loads(body)["stats"] == "missing"
    write_json(stats, sample_stats())
    status, _, body = request(server, "/api/health")
    health = json.loads(body)
    assert health["ok"] is True and health["stats"] == "ok"
    # Nothing about the file system: not the stats path, nor any part of it.
    assert set(health) == {"ok", "stats", "uptime_s"}
    assert stats.parent.name.encode() not in body and b"/" not in body


@pytest.mark.parametrize(
    "path",
    [
        "/../stats.json",
        "/..%2fstats.json",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E%2Fetc%2Fpasswd",
        "/static/../../../../etc/passwd",
        "/etc/passwd",
        "//etc/passwd",
        "/data/stats.json",
        "/replay.db",
        "/models/latest.onnx",
        "/secret.txt",
        "/stats.json/",
        "/stats.json%00",
        "/dashboard.js/..",
        "/server.py",
        "/static/index.html",
        "/%ff%fe",
        "/.%2e/secret.txt",
        "http://evil/secret.txt",
        "/index.html/../secret.txt",
    ],
)
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


def test_symlinked_stats_is_not_followed(served, tmp_path):
    server, stats = served
    # Another JSON file outside the data folder, that a symlink named stats.json points at.
    outside = tmp_path / "elsewhere" / "secret.json"
    outside.parent.mkdir()
    write_json(outside, {"step": 1, "api_key": "SECRET-TOKEN"})
    stats.symlink_to(outside)
    status, headers, body = request(server, "/stats.json")
    assert status == 503 and headers["Retry-After"] == "2"
    answer = json.loads(body)
    assert answer["status"] == "missing" and "symbolic link" in answer["detail"]
    assert b"SECRET-TOKEN" not in body and str(tmp_path).encode() not in body
    assert json.loads(request(server, "/api/health")[2])["stats"] == "missing"
    # A dangling symlink is refused the same way, not reported as a plain missing file.
    stats.unlink()
    stats.symlink_to(tmp_path / "nowhere.json")
    assert "symbolic link" in read_stats(stats).detail


def test_symlinked_data_folder_is_still_served(tmp_path):
    # Only stats.json itself must be a real file: a data folder reached through a symlink
    # (./data -> /mnt/disk/run) is the user's own choice.
    real = tmp_path / "real"
    real.mkdir()
    write_json(real / "stats.json", sample_stats(step=77))
    (tmp_path / "data").symlink_to(real)
    result = read_stats(tmp_path / "data" / "stats.json")
    assert result.status == "ok" and json.loads(result.body)["step"] == 77


def test_fifo_in_place_of_stats_does_not_hang(tmp_path):
    fifo = tmp_path / "stats.json"
    os.mkfifo(fifo)
    # On a thread: a blocking open() would wait for a writer forever, hanging the test.
    results = []
    reader = threading.Thread(target=lambda: results.append(read_stats(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    if reader.is_alive():
        with open(fifo, "wb"):  # a writer appears: the stuck open() returns, the thread ends
            pass
        pytest.fail("read_stats blocked on a FIFO named stats.json")
    assert results[0].status == "unreadable" and "regular file" in results[0].detail


@pytest.mark.parametrize(
    "hosts",
    [
        ["evil.example"],
        ["evil.example:{port}"],
        ["127.0.0.1.evil.example:{port}"],
        ["localhost.evil.example"],
        ["evil.example@127.0.0.1"],
        ["127.0.0.1:{port}/x"],
        [""],
        ["10.0.0.1:{port}"],
        ["[::2]:{port}"],
        [],
        ["127.0.0.1:{port}", "evil.example"],
    ],
)
def test_foreign_host_header_is_refused_on_loopback(served, hosts):
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: the Host header gives it away.
    server, stats = served
    write_json(stats, sample_stats())
    port = server.server_address[1]
    for path in ("/stats.json", "/api/health", "/"):
        status, _, body = request(server, path, host_headers=[h.format(port=port) for h in hosts])
        assert status == 403, (hosts, path, status)
        assert b"Host" in body and b"tictactoe" not in body and b"step" not in body


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "LocalHost:{port}",
        "127.0.0.1",
        "localhost",
        "[::1]:{port}",
        "localhost:9999",  # another port: an SSH tunnel (-L 9999:127.0.0.1:PORT)
    ],
)
def test_loopback_host_headers_are_accepted(served, host):
    server, stats = served
    write_json(stats, sample_stats())
    port = server.server_address[1]
    status, _, body = request(server, "/stats.json", host_headers=[host.format(port=port)])
    assert status == 200 and json.loads(body)["step"] == 1200


def test_ipv6_loopback_bind_accepts_its_address(tmp_path):
    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats())
    try:
        server = serve_in_thread(stats, host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        port = server.server_address[1]
        assert request(server, "/stats.json", host_headers=[f"[::1]:{port}"])[0] == 200
        assert request(server, "/stats.json", host_headers=[f"evil.example:{port}"])[0] == 403
    finally:
        server.shutdown()
        server.server_close()


def test_any_host_header_when_bound_to_all_interfaces(tmp_path):
    # --host 0.0.0.0 (a container) is a deliberate exposure: the names it is reached by are
    # unknown, so no Host is refused.
    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats())
    server = serve_in_thread(stats, host="0.0.0.0")
    try:
        port = server.server_address[1]
        for host in ("evil.example", "dashboard.internal:8080", f"127.0.0.1:{port}"):
            assert request(server, "/stats.json", host_headers=[host])[0] == 200, host
    finally:
        server.shutdown()
        server.server_close()


def test_idle_connection_is_closed_after_the_timeout(tmp_path):
    from trainer.dashboard.server import DashboardConfig

    assert 0 < DashboardConfig().request_timeout <= 60  # idle keep-alive sockets must not live forever
    server = serve_in_thread(tmp_path / "stats.json", request_timeout=0.5)
    try:
        with socket.create_connection(server.server_address[:2], timeout=10) as s:
            t0 = time.monotonic()
            assert s.recv(1) == b""  # the server hangs up on a client that sends nothing
            assert time.monotonic() - t0 < 5
    finally:
        server.shutdown()
        server.server_close()


def test_idle_connection_does_not_block_shutdown(tmp_path):
    # Handler threads are daemons: a browser's open keep-alive socket must not keep
    # server_close() (and so Ctrl-C of the dashboard) waiting for the 30 s timeout.
    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats())
    server = serve_in_thread(stats)
    assert server.daemon_threads is True
    idle = socket.create_connection(server.server_address[:2], timeout=5)
    try:
        time.sleep(0.2)  # let the server accept it and start a handler thread
        t0 = time.monotonic()
        server.shutdown()
        server.server_close()
        assert time.monotonic() - t0 < 3
    finally:
        idle.close()


def test_cli_binds_loopback_by_default_and_stops_on_sigterm(tmp_path):
    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats(extras=False))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.dashboard", "--data", str(tmp_path), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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


# Runs the dashboard's own main() with SIGTERM delivered at the one awkward moment: while the
# accepting thread is still handing a connection over, after that connection's thread is done.
_SIGTERM_MID_HAND_OVER = """
import os, signal, socketserver, sys, time
from trainer.dashboard import server

hand_over = socketserver.ThreadingMixIn.process_request

def process_request(self, request, client_address):
    hand_over(self, request, client_address)
    while self._slots._value < self._slots._initial_value:  # its thread has finished
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)  # the signal's Python handler runs here, inside the hand-over

socketserver.ThreadingMixIn.process_request = process_request
sys.exit(server.main(sys.argv[1:]))
"""


def test_sigterm_during_a_connection_hand_over_still_stops_the_dashboard(tmp_path):
    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats(extras=False))
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_MID_HAND_OVER, "--data", str(tmp_path), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        port = int(re.search(r":(\d+)/", proc.stdout.readline()).group(1))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/health")
        assert conn.getresponse().status == 200
        conn.close()
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- bounded requests and connections ------------------------------------------------------------
def _cut_off_within(sock: socket.socket, seconds: float, payload: bytes, every: float) -> float | None:
    """Trickles `payload` a byte per `every` s; seconds until the server hangs up, None if it answered."""
    import select

    t0 = time.monotonic()
    for byte in payload:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - t0
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return time.monotonic() - t0
            return time.monotonic() - t0 if data == b"" else None
        if time.monotonic() - t0 > seconds:
            break
    return None


def test_a_client_trickling_its_request_is_cut_off_at_the_request_deadline(tmp_path):
    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats())
    server = serve_in_thread(stats, request_timeout=1.5)
    try:
        port = server.server_address[1]
        request_bytes = (
            f"GET /stats.json HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: {'a' * 40}\r\n\r\n".encode()
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            # Each byte comes far sooner than any per-read timeout; the request as a whole does not.
            cut = _cut_off_within(s, 8.0, request_bytes, every=0.2)
        assert cut is not None and 1.4 <= cut < 4.0, cut
        assert request(server, "/stats.json")[0] == 200  # others are served as before
    finally:
        server.shutdown()
        server.server_close()


def test_connections_beyond_the_cap_are_answered_503_and_the_server_recovers(tmp_path):
    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats())
    server = serve_in_thread(stats, max_connections=3, request_timeout=30)
    address = server.server_address[:2]
    threads_before = threading.active_count()
    idle = [socket.create_connection(address, timeout=5) for _ in range(3)]
    try:
        time.sleep(0.3)  # each is accepted and waits in its own thread
        with socket.create_connection(address, timeout=5) as extra:
            t0 = time.monotonic()
            data = b""
            while chunk := extra.recv(65536):
                data += chunk
            assert time.monotonic() - t0 < 2
        assert data.startswith(b"HTTP/1.1 503 "), data
        assert threading.active_count() <= threads_before + 3
    finally:
        for s in idle:
            s.close()
    try:
        deadline = time.monotonic() + 5
        while True:  # the idle connections' threads notice the close and give their slots back
            status = request(server, "/stats.json")[0]
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 200
    finally:
        server.shutdown()
        server.server_close()


# --- allowed hosts, paths, the URL ---------------------------------------------------------------
def test_allowed_hosts_keep_the_host_check_on_a_wildcard_bind(tmp_path):
    # A container binds 0.0.0.0 while its port is published on the host's loopback only.
    from trainer.dashboard.server import parse_allowed_hosts

    stats = tmp_path / "stats.json"
    write_json(stats, sample_stats())
    server = serve_in_thread(stats, host="0.0.0.0", allowed_hosts=parse_allowed_hosts("localhost,127.0.0.1"))
    try:
        port = server.server_address[1]
        for host in ("localhost:8080", f"127.0.0.1:{port}", "LOCALHOST"):
            assert request(server, "/stats.json", host_headers=[host])[0] == 200, host
        for hosts in (["evil.example:8080"], ["dashboard.internal"], []):
            assert request(server, "/stats.json", host_headers=hosts)[0] == 403, hosts
    finally:
        server.shutdown()
        server.server_close()


def test_allowed_hosts_from_the_environment_and_a_bad_name_is_one_error_line(tmp_path):
    write_json(tmp_path / "stats.json", sample_stats())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer.dashboard",
            "--data",
            str(tmp_path),
            "--port",
            "0",
            "--allowed-hosts",
            "localhost,evil host",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    [line] = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert "--allowed-hosts" in line and "evil host" in line

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer.dashboard",
            "--data",
            str(tmp_path),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        cwd=REPO,
        env={**env, "DASHBOARD_ALLOWED_HOSTS": "dash.example"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"http://[^ ]+:(\d+)/", line).group(1))

        class Bound:
            server_address = ("127.0.0.1", port)

        assert request(Bound, "/stats.json", host_headers=[f"dash.example:{port}"])[0] == 200
        assert request(Bound, "/stats.json", host_headers=[f"127.0.0.1:{port}"])[0] == 403
    finally:
        proc.terminate()
        proc.wait(10)


def test_stats_reach_the_page_without_absolute_paths(served):
    server, stats = served
    data = stats.parent.resolve()
    obj = sample_stats()
    obj["last_checkpoint"] = str(data / "models" / "model_step_001200.onnx")
    obj["last_training_checkpoint"] = str(data / "checkpoints" / "latest.pt")
    obj["state_reason"] = f"replay DB {data / 'replay.db'} has no transitions table yet"
    write_json(stats, obj)
    status, _, body = request(server, "/stats.json")
    assert status == 200 and str(data).encode() not in body
    served_stats = json.loads(body)
    assert served_stats["last_checkpoint"] == "model_step_001200.onnx"
    assert served_stats["last_training_checkpoint"] == "latest.pt"
    assert served_stats["state_reason"] == "replay DB replay.db has no transitions table yet"
    assert served_stats["history"] == json.loads(json.dumps(obj["history"]))  # the rest as written


def test_the_dashboard_url_is_one_function_for_server_and_launcher(tmp_path):
    import trainer.launcher
    from trainer.dashboard.server import dashboard_url

    assert trainer.launcher.dashboard_url is dashboard_url
    assert dashboard_url("0.0.0.0", 80) == "http://127.0.0.1:80/"
    assert dashboard_url("::", 80) == "http://[::1]:80/"
    assert dashboard_url("::1", 80) == "http://[::1]:80/"
    try:
        server = serve_in_thread(tmp_path / "stats.json", host="::")
    except OSError as exc:
        pytest.skip(f"no IPv6 here: {exc}")
    try:
        assert server.url == f"http://[::1]:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
