"""A real, private PostgreSQL server (Debian's PostgreSQL 15) for tests, benchmarks and the demo.

Kept libraries (pytest-postgresql) drive `pg_ctl` as the calling user, which PostgreSQL refuses
when that user is root. This launcher runs `initdb` and `postgres` itself as the `postgres`
system user (when started by root), in the foreground in its own session, on a free port of
`listen`, with a generated superuser password so that clients off the loopback interface (pods
on a node bridge) can connect. `stop()` and `start()` keep the data, so fault tests can take the
database away and bring it back; `close()` stops it and removes the directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from matchops_devenv import statedir
from matchops_devenv.localserver import LocalServer
from matchops_devenv.ports import free_port
from matchops_devenv.procs import Service, ServiceError

SUPERUSER = "postgres"


def bindir() -> Path:
    """Where PostgreSQL's programs are: $MATCHOPS_PG_BINDIR, Debian's newest version, or PATH."""
    configured = os.environ.get("MATCHOPS_PG_BINDIR")
    if configured:
        return Path(configured)
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("postgres")
    if found is None:
        raise ServiceError("PostgreSQL is not installed: no postgres program (run make deps)")
    return Path(found).parent


class PostgreSQL(LocalServer):
    """One PostgreSQL server listening on a free port of `listen` (default loopback).

    `fsync=False` trades crash safety for speed (test suites); benchmarks keep the default.
    """

    def __init__(
        self, listen: str = "127.0.0.1", fsync: bool = True, start_timeout: float = 60.0
    ) -> None:
        self.listen = listen
        self.fsync = fsync
        self.start_timeout = start_timeout
        self.dir = statedir.claim("postgres")
        self.data = self.dir / "data"
        self.sockets = self.dir / "run"
        self.user = statedir.run_as("postgres")
        self.port = free_port(listen)
        self.password = secrets.token_urlsafe(16)
        self.bindir = bindir()
        self._server = Service(
            "postgres",
            [str(self.bindir / "postgres"), "-D", str(self.data), *self._settings()],
            self.dir,
            cwd=self.dir,
            user=self.user,
            group=self.user,
        )

    @property
    def host(self) -> str:
        """The address clients on this machine use (loopback when listening everywhere)."""
        return "127.0.0.1" if self.listen in ("0.0.0.0", "::") else self.listen  # noqa: S104

    def dsn(self, dbname: str = "postgres", host: str | None = None) -> str:
        """A libpq URL for a database, for clients reaching the server through `host`."""
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{host or self.host}:"
            f"{self.port}/{quote(dbname, safe='')}"
        )

    def start(self) -> None:
        """Initialise the cluster on first start, then start the server and wait for it."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._server.start()
        self._server.wait_ready(self._accepts_clients, timeout=self.start_timeout)

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (every process of it)."""
        return self._server.cpu_seconds()

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect clients); data is kept."""
        self._server.stop(timeout=30, sig=signal.SIGINT)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database (a copy of `template` when given); returns its DSN."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _accepts_clients(self) -> bool:
        with psycopg.connect(self.dsn(), connect_timeout=2):
            return True

    def _settings(self) -> list[str]:
        settings = {
            "port": str(self.port),
            "listen_addresses": self.listen,
            "unix_socket_directories": str(self.sockets),
            "max_connections": "300",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        if not self.fsync:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]

    def _initdb(self) -> None:
        self.sockets.mkdir(exist_ok=True)
        password_file = self.dir / "password"
        password_file.write_text(self.password + "\n")
        statedir.hand_over(self.dir, self.user)
        result = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(password_file),
                "--auth-local",
                "trust",
                "--auth-host",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C.UTF-8",
            ],
            cwd=self.dir,
            user=self.user,
            group=self.user,
            capture_output=True,
            text=True,
            check=False,
        )
        password_file.unlink()
        if result.returncode != 0:
            raise ServiceError(f"initdb failed ({result.returncode}):\n{result.stderr}")
        # initdb allows loopback only; a server listening elsewhere serves pods on a bridge too.
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
