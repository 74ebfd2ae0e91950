"""A throwaway PostgreSQL server for the tests: one cluster per test session, a database per test.

The cluster lives in a temporary directory, listens on 127.0.0.1 only (on a free port) and
trusts every local connection; it is stopped and deleted when the session ends. The server
refuses to run as root, so under root (as CI runs) it runs as the ``postgres`` system user.

Where the server binaries are missing the PostgreSQL tests are skipped, except under CI
(``CI`` set), where they fail: CI must not go green without them.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from psycopg import sql

__all__ = ["make_postgres_database"]

STARTUP_TIMEOUT = 30  # seconds
# Durability buys nothing for a cluster that is deleted at the end of the run. A time zone
# other than UTC shows up any timestamp handed back in the session's zone.
_SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
    "-c full_page_writes=off -c max_connections=200 -c timezone=America/New_York"
)


def _bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: on PATH, else Debian's."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    # Debian keeps the server out of PATH, one directory per major version.
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests need a PostgreSQL server: {reason}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Cluster:
    """One PostgreSQL cluster in ``base``, run as ``user`` (None: as ourselves)."""

    def __init__(self, bindir: Path, base: Path, user: str | None) -> None:
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.user = user
        self.port = 0

    def _run(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(
            [*prefix, *argv],
            cwd=self.base,  # the server's user may not be allowed into our working directory
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _check(self, what: str, result: subprocess.CompletedProcess[str]) -> None:
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed:\n{result.stdout}{result.stderr}\n{log}")

    def init(self) -> None:
        result = self._run(
            str(self.bindir / "initdb"),
            "--pgdata", str(self.data), "--username", "postgres", "--auth", "trust",
            "--encoding", "UTF8", "--no-locale", "--no-sync", "--no-instructions",
            timeout=120,
        )  # fmt: skip
        self._check("initdb", result)

    def start(self) -> None:
        # Another process may take the port between our probe and the server's bind; retry.
        for _ in range(3):
            self.port = _free_port()
            options = (
                f"{_SERVER_OPTIONS} -c port={self.port} -c unix_socket_directories={self.base}"
            )
            result = self._run(
                str(self.bindir / "pg_ctl"),
                "start", "--pgdata", str(self.data), "--log", str(self.log), "--wait",
                "--timeout", str(STARTUP_TIMEOUT), "--options", options,
                timeout=STARTUP_TIMEOUT + 10,
            )  # fmt: skip
            if result.returncode == 0:
                return
        self._check("pg_ctl start", result)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(
                str(self.bindir / "pg_ctl"),
                "stop", "--pgdata", str(self.data), "--mode", "immediate", "--wait",
                "--timeout", str(STARTUP_TIMEOUT),
                timeout=STARTUP_TIMEOUT + 10,
            )  # fmt: skip

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def make_postgres_database() -> Iterator[Callable[[], str]]:
    """A function that creates an empty database and returns its SQLAlchemy URL.

    The cluster behind it starts on first use, once per test session (per xdist worker).
    """
    bindir = _bindir()
    if bindir is None:
        _unavailable("initdb was found neither on PATH nor in /usr/lib/postgresql/*/bin")
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root, and there is no 'postgres' user to run the server")
        user = "postgres"

    base = Path(tempfile.mkdtemp(prefix="modelport-pg-"))
    if user:
        shutil.chown(base, user)
    cluster = _Cluster(bindir, base, user)
    try:
        cluster.init()
        cluster.start()
        with psycopg.connect(
            host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres", autocommit=True
        ) as admin:
            names = (f"test_{n}" for n in itertools.count(1))

            def create() -> str:
                name = next(names)
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
                )
                return cluster.url(name)

            yield create
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
