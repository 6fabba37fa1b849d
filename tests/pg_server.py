"""A throwaway PostgreSQL server for tests: `initdb` + `pg_ctl` in a temp dir on a free port.

    server = PgServer.start()          # or PgServer.find_binaries() is None -> skip
    url = server.create_database()     # a fresh database, postgresql://postgres:PW@127.0.0.1:PORT/NAME
    server.restart()                   # pg_ctl restart -m fast, as a server fault
    server.stop()

`initdb` refuses to run as root, so as root the binaries run as the `postgres` user (the
Debian package creates it) in a data dir under /tmp that it owns: pytest's own temp dirs are
private to root. fsync is off: nothing here needs to survive a power cut. TCP connections
need the password (so a bad password can be tested); the local socket is trusted.
"""

from __future__ import annotations

import glob
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path, root: Path, port: int, password: str):
        self.bindir, self.root, self.port, self.password = bindir, root, port, password
        self.datadir = root / "data"
        self._names = itertools.count()

    # --- lifecycle ---------------------------------------------------------------------------
    @staticmethod
    def find_binaries() -> Path | None:
        """The newest installed server's bin dir (Debian: /usr/lib/postgresql/N/bin)."""
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
        if found:
            return Path(found[-1]).parent
        on_path = shutil.which("initdb")
        return Path(on_path).parent if on_path else None

    @classmethod
    def start(cls, bindir: Path | None = None) -> PgServer:
        bindir = bindir or cls.find_binaries()
        if bindir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (initdb) installed")
        root = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp"))
        server = cls(bindir, root, _free_port(), secrets.token_hex(8))
        try:
            server._initdb()
            server._ctl("start", "-w", "-t", "60", "-l", str(root / "server.log"), "-o", server._options())
        except BaseException:
            server.cleanup()
            raise
        return server

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._ctl("stop", "-m", "immediate", "-w", check=False)
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """What an operator's `pg_ctl restart -m fast` does: every connection is cut."""
        self._ctl(
            "restart",
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "-l",
            str(self.root / "server.log"),
            "-o",
            self._options(),
        )

    def shutdown(self) -> None:
        self._ctl("stop", "-m", "fast", "-w")

    def resume(self) -> None:
        self._ctl("start", "-w", "-t", "60", "-l", str(self.root / "server.log"), "-o", self._options())

    # --- databases ---------------------------------------------------------------------------
    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{SUPERUSER}:{pw}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        return self._run(
            "psql",
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            dbname,
            "-c",
            sql,
        ).stdout.strip()

    # --- internals ---------------------------------------------------------------------------
    def _options(self) -> str:
        # The socket lives in the server's own dir: /var/run/postgresql may not exist here.
        return f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c full_page_writes=off"

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, SUPERUSER)
            shutil.chown(pwfile, SUPERUSER)
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def _ctl(self, *args: str, check: bool = True) -> None:
        # Always with -l: a server left holding our stdout pipe would hang subprocess.run.
        self._run("pg_ctl", "-D", str(self.datadir), *args, check=check)

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc
