"""A throwaway PostgreSQL server for the test session, from the Debian binaries on the machine.

``initdb`` in a temporary folder, trust authentication on loopback, a Unix socket in that folder and a free TCP
port on 127.0.0.1; stopped by its pid at the end. PostgreSQL refuses to run as root (CI runs as root), so there
the cluster belongs to the ``postgres`` system user and every command runs as it through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

# CI sets it: there a missing PostgreSQL is an error, never a quietly smaller test run.
REQUIRED_ENV = "KLING_MCP_TEST_POSTGRES"
SYSTEM_USER = "postgres"
START_TIMEOUT_S = 60.0


def binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has initdb and pg_ctl, or None."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()]
    found = [p for p in found if (p / "pg_ctl").exists()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, default=None)


def required() -> bool:
    return os.environ.get(REQUIRED_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class PostgresServer:
    port: int
    user: str

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL. Each test gets its own, so ledgers never meet."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_owner(command: list[str], as_root: bool) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if as_root else command


@contextmanager
def running_server(bin_dir: Path) -> Iterator[PostgresServer]:
    as_root = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="kling-pg-"))
    data, sockets = top / "data", top / "run"
    sockets.mkdir()
    user = SYSTEM_USER if as_root else _current_user()
    if as_root:
        shutil.chown(top, SYSTEM_USER)
        shutil.chown(sockets, SYSTEM_USER)
    port = _free_port()
    try:
        subprocess.run(
            _as_owner([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "-E", "UTF8"], as_root),
            check=True,
            capture_output=True,
        )
        options = f"-k {sockets} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        subprocess.run(
            _as_owner(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(top / "log"), "-w", "start"],
                as_root,
            ),
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        pid = int((data / "postmaster.pid").read_text().split()[0])
        try:
            yield PostgresServer(port=port, user=user)
        finally:
            _stop(pid)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _stop(pid: int) -> None:
    """Fast shutdown by the postmaster's pid, then wait for it to go."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _current_user() -> str:
    import getpass

    return getpass.getuser()
