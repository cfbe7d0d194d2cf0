"""A real, private RabbitMQ node (Debian's rabbitmq-server) for tests, benchmarks and the demo.

Kept libraries (pytest-rabbitmq) start the server as the calling user and let Erlang spawn a
shared epmd daemon on the default port, which outlives the test run and collides with other
runs on the machine. This launcher instead runs the node as the `rabbitmq` system user (when
started by root), with its own epmd on its own port in the foreground, its own node name,
ports, Mnesia directory and enabled-plugins file, and the management plugin on a free port.
`stop()` and `start()` keep the data, so fault tests can restart the broker mid-stream; `close()`
stops everything and removes the directory.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika

from matchops_devenv import statedir
from matchops_devenv.localserver import LocalServer
from matchops_devenv.ports import free_port, is_listening
from matchops_devenv.procs import Service

SERVER = Path(os.environ.get("MATCHOPS_RABBITMQ_SERVER", "/usr/lib/rabbitmq/bin/rabbitmq-server"))
EPMD = os.environ.get("MATCHOPS_EPMD", "epmd")
USER = "matchops"


class RabbitMQ(LocalServer):
    """One RabbitMQ node listening on free ports of `listen` (default loopback)."""

    def __init__(self, listen: str = "127.0.0.1", start_timeout: float = 120.0) -> None:
        self.listen = listen
        self.start_timeout = start_timeout
        self.dir = statedir.claim("rabbitmq")
        self.user = statedir.run_as("rabbitmq")
        self.port = free_port(listen)
        self.management_port = free_port(listen)
        self.dist_port = free_port(listen)
        self.epmd_port = free_port("127.0.0.1")
        self.username = USER
        self.password = secrets.token_urlsafe(16)
        self.node = f"matchops-{self.port}@localhost"
        env = self._environment()
        self._epmd = Service(
            "epmd",
            [EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            self.dir,
            env=env,
            cwd=self.dir,
            user=self.user,
            group=self.user,
        )
        self._server = Service(
            "rabbitmq",
            [str(SERVER)],
            self.dir,
            env=env,
            cwd=self.dir,
            user=self.user,
            group=self.user,
        )
        self._write_configuration()

    @property
    def host(self) -> str:
        """The address clients on this machine use (loopback when listening everywhere)."""
        return "127.0.0.1" if self.listen in ("0.0.0.0", "::") else self.listen  # noqa: S104

    def url(
        self, vhost: str = "/", host: str | None = None, user: tuple[str, str] | None = None
    ) -> str:
        """The AMQP URL of a virtual host, for clients reaching the node through `host`, as
        `user` (name, password; default the administrator)."""
        name, password = user or (self.username, self.password)
        return (
            f"amqp://{quote(name, safe='')}:{quote(password, safe='')}@{host or self.host}:"
            f"{self.port}/{quote(vhost, safe='')}"
        )

    @property
    def management_url(self) -> str:
        """The management API's base URL, credentials included."""
        return (
            f"http://{self.username}:{quote(self.password, safe='')}@{self.host}:"
            f"{self.management_port}"
        )

    def start(self) -> None:
        """Start (or restart, on the same data) epmd and the node; wait until both ports serve."""
        self._epmd.start()
        self._epmd.wait_ready(lambda: is_listening(self.epmd_port), timeout=15)
        self._server.start()
        self._server.wait_ready(self._accepts_clients, timeout=self.start_timeout, interval=0.5)

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (every process of it)."""
        return self._server.cpu_seconds()

    def stop(self) -> None:
        """Stop the node (it shuts down cleanly on SIGTERM) and its epmd; data is kept."""
        self._server.stop(timeout=60, sig=signal.SIGTERM)
        self._epmd.stop(timeout=5)

    def management(self) -> httpx.Client:
        """A client for the management API (caller closes it)."""
        return httpx.Client(
            base_url=f"http://{self.host}:{self.management_port}/api",
            auth=(self.username, self.password),
            timeout=30,
        )

    def create_vhost(self, name: str) -> str:
        """Create a virtual host the default user may use fully; returns its AMQP URL."""
        vhost = quote(name, safe="")
        with self.management() as api:
            api.put(f"/vhosts/{vhost}").raise_for_status()
            api.put(
                f"/permissions/{vhost}/{self.username}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            ).raise_for_status()
        return self.url(name)

    def set_user(
        self,
        name: str,
        password: str,
        vhost: str,
        permissions: tuple[str, str, str] = (".*", ".*", ".*"),
    ) -> str:
        """Create or update a user whose (configure, write, read) patterns on `vhost` are
        `permissions`; returns its AMQP URL of that vhost."""
        configure, write, read = permissions
        with self.management() as api:
            api.put(
                f"/users/{quote(name, safe='')}", json={"password": password, "tags": ""}
            ).raise_for_status()
            api.put(
                f"/permissions/{quote(vhost, safe='')}/{quote(name, safe='')}",
                json={"configure": configure, "write": write, "read": read},
            ).raise_for_status()
        return self.url(vhost, user=(name, password))

    def delete_user(self, name: str) -> None:
        with self.management() as api:
            response = api.delete(f"/users/{quote(name, safe='')}")
            if response.status_code != 404:
                response.raise_for_status()

    def queue_info(self, vhost: str, queue: str) -> dict[str, Any] | None:
        """The management API's view of a queue (statistics, policy, arguments); None when
        the queue does not exist."""
        with self.management() as api:
            response = api.get(f"/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def delete_vhost(self, name: str) -> None:
        with self.management() as api:
            response = api.delete(f"/vhosts/{quote(name, safe='')}")
            if response.status_code != 404:
                response.raise_for_status()

    def close_connections(self, vhost: str | None = None) -> int:
        """Close client connections (all, or one virtual host's), as a network fault would."""
        with self.management() as api:
            path = f"/vhosts/{quote(vhost, safe='')}/connections" if vhost else "/connections"
            connections = api.get(path).raise_for_status().json()
            for connection in connections:
                api.delete(
                    f"/connections/{quote(connection['name'], safe='')}",
                    headers={"X-Reason": "closed by the test environment"},
                )
        return len(connections)

    def _accepts_clients(self) -> bool:
        if not is_listening(self.management_port, self.host):
            return False
        parameters = pika.URLParameters(self.url())
        parameters.socket_timeout = 2
        parameters.connection_attempts = 1
        connection = pika.BlockingConnection(parameters)
        connection.close()
        return True

    def _environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_"))
        }
        env.update(
            HOME=str(self.dir / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=self.listen,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            # The packaged env file (/etc/rabbitmq/rabbitmq-env.conf) must not override the above.
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.dir / "rabbitmq-server.pid"),
        )
        return env

    def _write_configuration(self) -> None:
        (self.dir / "home").mkdir()
        (self.dir / "log").mkdir()
        (self.dir / "mnesia").mkdir()
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "advanced.config").write_text("[].\n")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"default_user = {self.username}",
                    f"default_pass = {self.password}",
                    # Pods on a node bridge connect from other addresses than loopback.
                    "loopback_users = none",
                    f"management.tcp.ip = {self.listen}",
                    f"management.tcp.port = {self.management_port}",
                    "log.console = true",
                    "log.console.level = warning",
                    "log.file = false",
                    "disk_free_limit.absolute = 50MB",
                    # Queue and connection statistics every second (default 5 s), so that
                    # what tests read through the management API is fresh.
                    "collect_statistics_interval = 1000",
                    "",
                ]
            )
        )
        statedir.hand_over(self.dir, self.user)
