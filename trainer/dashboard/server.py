"""A read-only web dashboard for one training run: one page plus the run's stats.json.

The page (static/) polls `/stats.json` every two seconds and draws everything itself, so
the server only has to hand out a fixed set of files. It serves exactly these paths and
nothing else of the data folder:

    /                 the page (also /index.html)
    /dashboard.js     its script
    /dashboard.css    its style sheet
    /stats.json       the stats file (default <data>/stats.json)
    /api/health       {"ok": true, "stats": "ok"|"missing"|"unreadable"|"too_large",
                       "uptime_s": ...}: for container health checks; names no path

Routing is a lookup of the exact decoded path in a table, never a join onto a folder, so
`..`, `%2e%2e`, absolute paths and symlinks in the data folder cannot reach another file:
anything not in the table is a 404. The stats file itself is opened with O_NOFOLLOW: a
stats.json that is a symlink (to another run's stats, or to any JSON file the server's user
can read) is answered as missing, with the reason, instead of being followed.

Bound to a loopback address (the default), the server answers only requests whose Host
header names a loopback host (localhost, 127.0.0.1, [::1] or the bound address, any port, so
an SSH tunnel on another local port still works); anything else gets a 403. That stops a web
page whose DNS name was rebound to 127.0.0.1 from reading the stats through the user's
browser. `--allowed-hosts` names the hosts to answer to besides those, and keeps the check on
whatever the bind address: a container binds 0.0.0.0 while its port is published on the
host's 127.0.0.1, the same rebinding case, so docker-compose.yml passes the names the user
opens it by. Bound to any other address without `--allowed-hosts` every Host is accepted: the
user has chosen to expose the dashboard, under names we cannot know.

Each connection is a thread, so both are bounded: a connection gets `--request-timeout`
seconds for a whole request (idle keep-alive time before it included, across all its reads:
a client that sends a byte now and then is cut off all the same), and beyond
`--max-connections` at once a new one is answered 503 and closed on the spot.

A missing or unreadable stats.json (a writer that does not rename atomically, a disk
full, a hand edit) is answered with **503** and a small JSON body naming the problem
(`{"status": "missing" | "unreadable" | "too_large", "detail": ...}`, plus `Retry-After`).
The server keeps no copy of its own: the page keeps the last good stats it saw on screen
and shows "waiting for stats.json" or "stats unreadable, retrying" above them, so a
person can tell fresh numbers from old ones and the server stays stateless.

A stats file that parses is re-serialised before it is sent: NaN and infinities (which
Python writers may emit but a browser's JSON.parse rejects) become null, so one bad
float costs one "—" on the page instead of the whole page; and absolute paths in its
strings (`last_checkpoint`, a wait reason naming the DB) are cut to their last part, so
the page learns which file, never where the run lives.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import logging
import math
import os
import re
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainer.atomic_files import finite_or_none
from trainer.config.loader import load_config
from trainer.logging_setup import LogFormat, configure_logging
from trainer.runtime import StopFlag

log = logging.getLogger("trainer.dashboard")

# Per-program prefix (DASHBOARD_PORT, ...), like ACTOR_ and EVALUATOR_: the daemon's TRAINER_*
# settings in a shared environment do not change the dashboard.
ENV_PREFIX = "DASHBOARD_"
STATIC_DIR = Path(__file__).parent / "static"
# URL path -> (file in static/, content type). The whole of what the page is made of.
STATIC_ROUTES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# Far above any real stats.json (a few hundred KB with a long history); guards memory.
MAX_STATS_BYTES = 32 * 1024 * 1024

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


class DashboardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: Path = Field(Path("./data"), description="Data folder of the run (stats.json is read from it).")
    stats: Path | None = Field(None, description="stats.json to serve; default <data>/stats.json.")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to bind; 0.0.0.0 exposes the dashboard to the network (inside a container only) and accepts any Host header unless --allowed-hosts is given, where a loopback address accepts only loopback names.",
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one (the URL is printed).")
    allowed_hosts: str | None = Field(
        None,
        description="Comma-separated host names the page may be opened by (the Host header, any port), e.g. localhost,127.0.0.1; given, every other Host is refused whatever the bind address; unset = loopback names on a loopback bind, any name otherwise.",
    )
    request_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection gets to send a whole request (request line and headers), idle keep-alive time included; then it is closed.",
    )
    max_connections: int = Field(
        32, ge=1, description="Connections served at once; one more is answered 503 and closed at once."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Logging level (requests are logged at DEBUG)."
    )
    log_format: LogFormat = "text"

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: str | None) -> str | None:
        if value is not None:
            parse_allowed_hosts(value)
        return value

    @property
    def stats_path(self) -> Path:
        return self.stats if self.stats is not None else self.data / "stats.json"


@dataclass(frozen=True)
class StatsRead:
    """One read of stats.json: `body` is set when status is "ok"."""

    status: str  # ok | missing | unreadable | too_large
    detail: str = ""
    body: bytes | None = None


# An absolute path of two parts or more ("/srv/run/data/models/model_step_000100.onnx"), not a
# relative one, a URL's path or a ratio: it is shown by its last part.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/\\~-])(?:/[^\s/'\"]+)+/([^\s/'\"]+)")


def _without_absolute_paths(obj: Any) -> Any:
    """Absolute paths in strings cut to their last part: the page learns which file, not where."""
    if isinstance(obj, str):
        return _ABSOLUTE_PATH.sub(r"\1", obj)
    if isinstance(obj, dict):
        return {k: _without_absolute_paths(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_without_absolute_paths(v) for v in obj]
    return obj


def _os_reason(exc: OSError) -> str:
    # Never str(exc): it carries the absolute path, and the detail goes out to the browser.
    return exc.strerror or type(exc).__name__


# O_NOFOLLOW: a symlinked stats.json would let the server hand out any JSON file it can read.
# O_NONBLOCK: a FIFO in its place would otherwise block the handler thread in open() forever.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def read_stats(path: Path) -> StatsRead:
    if not hasattr(os, "O_NOFOLLOW") and path.is_symlink():  # platforms without the flag
        return StatsRead("missing", f"{path.name} is a symbolic link; not followed")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return StatsRead("missing", f"{path.name} does not exist yet; the trainer writes it once it starts")
    except OSError as exc:
        # ELOOP (Linux) / EMLINK (BSD) is how O_NOFOLLOW refuses a symlink as the last part.
        if exc.errno in (errno.ELOOP, errno.EMLINK) and path.is_symlink():
            return StatsRead("missing", f"{path.name} is a symbolic link; not followed")
        return StatsRead("unreadable", f"cannot read {path.name}: {_os_reason(exc)}")
    try:
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
                return StatsRead("unreadable", f"{path.name} is {kind}")
            raw = f.read(MAX_STATS_BYTES + 1)
    except OSError as exc:
        return StatsRead("unreadable", f"cannot read {path.name}: {_os_reason(exc)}")
    if len(raw) > MAX_STATS_BYTES:
        return StatsRead("too_large", f"{path.name} is over {MAX_STATS_BYTES} bytes")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return StatsRead("unreadable", f"{path.name} is not valid JSON ({exc})")
    except RecursionError:
        return StatsRead("unreadable", f"{path.name} is nested too deeply")
    if not isinstance(obj, dict):
        return StatsRead("unreadable", f"{path.name} is not a JSON object")
    page = finite_or_none(_without_absolute_paths(obj))
    body = json.dumps(page, allow_nan=False, separators=(",", ":")).encode()
    return StatsRead("ok", body=body)


# A Host header: a name or an IPv4 address, or an IPv6 address in brackets; optional port.
_HOST_RE = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::\d{1,5})?")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_header_name(value: str) -> str | None:
    """The host in a Host header ("[::1]:8080" -> "::1"), or None when it is malformed."""
    m = _HOST_RE.fullmatch(value.strip().lower())
    return (m.group("v6") or m.group("name")) if m else None


def parse_allowed_hosts(value: str) -> frozenset[str]:
    """ "localhost, [::1]" -> {"localhost", "::1"}; a name that no Host header could carry is an error."""
    names = set()
    for item in value.split(","):
        name = host_header_name(item) if item.strip() else None
        if name is None:
            raise ValueError(f"{item.strip()!r} is not a host name or address")
        names.add(name)
    return frozenset(names)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline. A timeout per read would let a client that sends
    a byte now and then hold its connection (and its thread) forever."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline = math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class DashboardHandler(BaseHTTPRequestHandler):
    server_version = "trainer-dashboard"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = None  # reads run against the request deadline instead (see handle_one_request)
    server: DashboardServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # The whole request, idle keep-alive time before it included, within one deadline:
        # a polling page sends its next request within seconds, a stuck client is let go.
        self._reader.deadline = time.monotonic() + self.server.request_timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        # Writing the answer gets a fresh allowance: a client that reads slowly is cut off too.
        self.connection.settimeout(self.server.request_timeout)
        reason = self.server.host_problem(self.headers.get_all("Host") or [])
        if reason:
            self.send_error(HTTPStatus.FORBIDDEN, reason)
            return False
        return True

    # --- routing ---------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._route(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(send_body=False)

    def _not_allowed(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"method not allowed\n",
            "text/plain; charset=utf-8",
            {"Allow": "GET, HEAD"},
            send_body=True,
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def _route(self, send_body: bool) -> None:
        try:
            path = unquote(urlsplit(self.path).path, errors="strict")
        except (UnicodeDecodeError, ValueError):
            self.send_error(HTTPStatus.BAD_REQUEST, "bad path")
            return
        if path == "/stats.json":
            self._send_stats(send_body)
        elif path == "/api/health":
            self._send_health(send_body)
        elif path in STATIC_ROUTES:
            name, ctype = STATIC_ROUTES[path]
            try:
                body = (STATIC_DIR / name).read_bytes()
            except OSError:
                self._send(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    b"page missing from install\n",
                    "text/plain; charset=utf-8",
                    send_body=send_body,
                )
                return
            self._send(HTTPStatus.OK, body, ctype, send_body=send_body)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8", send_body=send_body)

    # --- responses -------------------------------------------------------------------------
    def _send_stats(self, send_body: bool) -> None:
        result = read_stats(self.server.stats_path)
        if result.status == "ok":
            assert result.body is not None
            self._send(HTTPStatus.OK, result.body, "application/json", send_body=send_body)
            return
        body = json.dumps({"status": result.status, "detail": result.detail}).encode()
        self._send(
            HTTPStatus.SERVICE_UNAVAILABLE,
            body,
            "application/json",
            {"Retry-After": "2"},
            send_body=send_body,
        )

    def _send_health(self, send_body: bool) -> None:
        result = read_stats(self.server.stats_path)
        body = json.dumps(
            {
                "ok": True,
                "stats": result.status,
                "uptime_s": round(time.monotonic() - self.server.started, 1),
            }
        ).encode()
        self._send(HTTPStatus.OK, body, "application/json", send_body=send_body)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        ctype: str,
        extra: dict[str, str] | None = None,
        *,
        send_body: bool,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed requests (bad request line, undecodable path): short plain answer and close.
        self.close_connection = True
        body = f"{code} {message or HTTPStatus(code).phrase}\n".encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # A page polls every 2 s: request lines go to DEBUG, not the terminal.
        log.debug("%s %s", self.address_string(), format % args)


_BUSY_BODY = b"too many connections; retry shortly\n"
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\nRetry-After: 2\r\n"
    b"Connection: close\r\n\r\n" + _BUSY_BODY
)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        stats_path: Path,
        *,
        allowed_hosts: frozenset[str] | None = None,
        request_timeout: float = 10.0,
        max_connections: int = 32,
    ):
        self.stats_path = stats_path
        self.started = time.monotonic()
        self.request_timeout = request_timeout
        # One thread per connection: the cap bounds the threads as well as the sockets.
        self._slots = threading.BoundedSemaphore(max_connections)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, DashboardHandler)
        bound = str(self.server_address[0])
        loopback = LOOPBACK_NAMES | {bound, address[0].lower()} if _is_loopback(bound) else frozenset()
        # None: any Host is accepted (see the module docstring).
        self.allowed_hosts: frozenset[str] | None = (
            allowed_hosts | loopback if allowed_hosts is not None else loopback or None
        )

    def host_problem(self, hosts: list[str]) -> str:
        """Why a request with these Host headers is refused; "" when it is not."""
        if self.allowed_hosts is None:
            return ""
        if len(hosts) != 1:
            return "Host header missing" if not hosts else "more than one Host header"
        if host_header_name(hosts[0]) not in self.allowed_hosts:
            return "Host header names none of the hosts this dashboard answers to (--allowed-hosts)"
        return ""

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        # On the accepting thread: a non-blocking send, so a client that never reads cannot
        # stall the server for everyone.
        try:
            request.setblocking(False)
            request.send(BUSY_RESPONSE)
        except OSError:
            pass
        self.shutdown_request(request)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the host, which can hang for
        # seconds on a machine without a resolver; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return dashboard_url(str(host), int(port))


def dashboard_url(host: str, port: int) -> str:
    """The URL to open for a dashboard bound to host:port (a wildcard bind: its loopback)."""
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def make_server(
    stats_path: str | Path, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> DashboardServer:
    """`options`: DashboardServer's allowed_hosts, request_timeout, max_connections."""
    return DashboardServer((host, port), Path(stats_path), **options)


def serve_in_thread(
    stats_path: str | Path, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> DashboardServer:
    """Start a server on a background thread (tests, embedding); stop it with .shutdown()."""
    server = make_server(stats_path, host, port, **options)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="dashboard", daemon=True
    ).start()
    return server


def stop_on_signals() -> StopFlag:
    """A flag that SIGTERM and SIGINT set (main thread only: that is where Python runs them).

    The handler only sets a flag that the serving loop reads between requests. An exception
    raised from the handler lands at whatever bytecode the loop is on: one landing in the
    hand-over of a connection to its thread released the connection's slot a second time, and
    socketserver logged that as a failed request and served on, deaf to the signal."""
    stop = StopFlag()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


def serve_until(server: DashboardServer, stop: StopFlag, poll_interval: float = 0.25) -> None:
    """Serve on this thread until `stop` is set, then close the listening socket."""
    server.timeout = poll_interval  # how long handle_request waits before `stop` is read again
    try:
        while not stop.is_set():
            server.handle_request()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(
        DashboardConfig,
        argv,
        prog="python -m trainer.dashboard",
        env_prefix=ENV_PREFIX,
        description="Serve the training dashboard: one page that polls the run's stats.json.",
    )
    configure_logging(cfg.log_level, cfg.log_format)
    try:
        server = make_server(
            cfg.stats_path,
            cfg.host,
            cfg.port,
            request_timeout=cfg.request_timeout,
            max_connections=cfg.max_connections,
            allowed_hosts=None if cfg.allowed_hosts is None else parse_allowed_hosts(cfg.allowed_hosts),
        )
    except OSError as exc:
        print(f"error: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    # Before the URL is printed: whoever reads it may stop the dashboard at once.
    stop = stop_on_signals()
    print(f"dashboard: {server.url}  (stats: {cfg.stats_path})", flush=True)
    serve_until(server, stop)
    return 0
