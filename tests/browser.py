"""Find and drive a headless Chromium for page tests, with the standard library only.

The browser is driven over the DevTools protocol on `--remote-debugging-pipe`: Chromium
reads NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4. That
needs no websocket client and no free port, and lets one live page be observed while a
test changes the files behind it.

Also a development tool:

    python tests/browser.py screenshot http://127.0.0.1:8080/ /tmp/dashboard.png
    python tests/browser.py dom http://127.0.0.1:8080/
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Flags for a root user in a container, with no network traffic of the browser's own.
BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--no-default-browser-check",
    "--disable-extensions",
]
INSTALL_HINT = "apt-get install -y chromium (or set CHROMIUM_BIN)"


def find_chromium() -> str | None:
    """CHROMIUM_BIN, else Debian's /usr/bin/chromium, else a chromium/chrome on PATH."""
    env = os.environ.get("CHROMIUM_BIN")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in (
        "/usr/bin/chromium",
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
        "chrome",
        "headless_shell",
    ):
        found = shutil.which(name)
        if found:
            return found
    return None


class CDPError(RuntimeError):
    pass


class HeadlessChromium:
    """A headless Chromium process spoken to over --remote-debugging-pipe.

    with HeadlessChromium() as browser:
        page = browser.open(url)
        page.wait_for("document.title !== ''")
    """

    def __init__(
        self,
        binary: str | None = None,
        window_size: tuple[int, int] = (1280, 900),
        extra_flags: list[str] | None = None,
    ):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise FileNotFoundError(f"no chromium binary found; {INSTALL_HINT}")
        self.window_size = window_size
        self.extra_flags = extra_flags or []
        self._ids = itertools.count(1)
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.console: list[str] = []  # console messages and uncaught exceptions of pages

    def __enter__(self) -> HeadlessChromium:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        r, self._to_browser = os.pipe()
        self._from_browser, w = os.pipe()
        # Chromium wants the pipe on fds 3 and 4 exactly. bash moves it there (no preexec_fn,
        # which is unsafe with the test's server threads running); the fds are first moved
        # to 10 and up so that placing one cannot overwrite the other.
        to_browser_r, from_browser_w = fcntl.fcntl(r, fcntl.F_DUPFD, 10), fcntl.fcntl(w, fcntl.F_DUPFD, 10)
        os.close(r)
        os.close(w)
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        width, height = self.window_size
        cmd = [
            shutil.which("bash") or "/bin/bash",
            "-c",
            script,
            self.binary,
            *BASE_FLAGS,
            *self.extra_flags,
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._stderr: list[bytes] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        threading.Thread(target=self._read_loop, daemon=True).start()
        try:
            self.call("Browser.getVersion", timeout=60)
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.call("Browser.close", timeout=3)
                except Exception:
                    pass
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    # --- protocol ------------------------------------------------------------------------
    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-50]

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    for q in self._replies.values():
                        q.put({"error": {"message": "browser closed the pipe"}})
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        q = self._replies.pop(msg["id"], None)
                    if q is not None:
                        q.put(msg)
                else:
                    self._on_event(msg)

    def _on_event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(
                "exception: " + str(details.get("exception", {}).get("description") or details.get("text"))
            )

    def call(
        self, method: str, params: dict | None = None, session_id: str | None = None, timeout: float = 10
    ) -> dict:
        msg_id = next(self._ids)
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._replies[msg_id] = q
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id:
            msg["sessionId"] = session_id
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise CDPError(f"{method}: no reply in {timeout} s; stderr: {self.stderr_tail()}") from None
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def stderr_tail(self) -> str:
        return b"".join(self._stderr[-10:]).decode(errors="replace")

    def open(self, url: str) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.call("Runtime.enable")
        page.call("Page.enable")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": self.window_size[0],
                "height": self.window_size[1],
                "deviceScaleFactor": 1,
                "mobile": False,
            },
        )
        page.call("Page.navigate", {"url": url})
        return page


class Page:
    def __init__(self, browser: HeadlessChromium, session_id: str):
        self.browser = browser
        self.session_id = session_id

    def call(self, method: str, params: dict | None = None, timeout: float = 10) -> dict:
        return self.browser.call(method, params, self.session_id, timeout)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10, interval: float = 0.1) -> Any:
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except CDPError as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(interval)
        raise TimeoutError(
            f"{expression!r} not truthy after {timeout} s (last: {last!r}); "
            f"console: {self.browser.console[-5:]}"
        )

    def text(self, element_id: str) -> str | None:
        return self.evaluate(f"(document.getElementById({json.dumps(element_id)}) || {{}}).textContent")

    def screenshot(self, path: str | os.PathLike, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            h = self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 900
            w = self.browser.window_size[0]
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": w, "height": int(h), "deviceScaleFactor": 1, "mobile": False},
            )
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": int(h), "scale": 1}
        data = self.call("Page.captureScreenshot", params, timeout=20)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("screenshot", "dom"):
        print(__doc__, file=sys.stderr)
        return 2
    with HeadlessChromium(window_size=(1280, 900)) as browser:
        page = browser.open(argv[1])
        page.wait_for("document.readyState === 'complete'")
        time.sleep(float(os.environ.get("SETTLE_S", "2.5")))
        if argv[0] == "screenshot":
            out = argv[2] if len(argv) > 2 else "screenshot.png"
            print(page.screenshot(out))
        else:
            print(page.evaluate("document.documentElement.outerHTML"))
        if browser.console:
            print("\n".join(browser.console), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
