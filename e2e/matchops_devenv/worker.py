"""The real `matchops-worker` as a supervised process, for tests, benchmarks and the demo."""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from matchops_devenv.ports import free_port, is_listening
from matchops_devenv.procs import Service, ServiceError, tail


@functools.cache
def _endpoint_client() -> httpx.Client:
    """One HTTP client for every worker's endpoints.

    A new client per request builds a TLS context each time: about 24 ms of CPU, which a
    benchmark or fault test polling a worker several times a second takes from the worker
    it measures.
    """
    return httpx.Client(
        timeout=5, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
    )


def worker_command() -> list[str]:
    """The installed console script, or the module when running from a checkout without it."""
    script = Path(sys.executable).with_name("matchops-worker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "matchops_worker.main"]


class WorkerProcess:
    """One `matchops-worker` process with its own metrics port and log file."""

    def __init__(
        self,
        state_dir: Path,
        amqp_url: str,
        database_dsn: str,
        settings: Mapping[str, str] | None = None,
        name: str = "worker",
    ) -> None:
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "MATCHOPS_AMQP_URL": amqp_url,
            "MATCHOPS_DATABASE_DSN": database_dsn,
            "MATCHOPS_METRICS_PORT": str(self.metrics_port),
            "MATCHOPS_DECLARE_TOPOLOGY": "true",
            **(settings or {}),
        }
        self.service = Service(name, worker_command(), state_dir, env=env)

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> WorkerProcess:
        self.service.start()
        self.service.wait_ready(lambda: is_listening(self.metrics_port), timeout=timeout)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.service.wait_ready(self.ready, timeout=timeout)

    def ready(self) -> bool:
        return self._get("/readyz").status_code == 200

    def alive(self) -> bool:
        return self._get("/healthz").status_code == 200

    def metrics(self) -> dict[str, float]:
        """The worker's metrics as {'name{labels}': value}."""
        values: dict[str, float] = {}
        for line in self._get("/metrics").text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def counter(self, name: str, **labels: str) -> float:
        """One sample of a metric, 0 when it has not been seen yet."""
        selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        key = f"{name}{{{selector}}}" if labels else name
        return self.metrics().get(key, 0.0)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait for exit; returns the exit code (None if it had to be killed)."""
        process = self.service.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        code = process.poll()
        self.service.stop(timeout=5)
        return code

    def kill(self) -> None:
        self.service.stop(timeout=0, sig=signal.SIGKILL)

    @property
    def log(self) -> str:
        return tail(self.service.log_path, lines=200)

    def _get(self, path: str) -> httpx.Response:
        try:
            return _endpoint_client().get(f"http://127.0.0.1:{self.metrics_port}{path}")
        except httpx.HTTPError as exc:
            raise ServiceError(f"worker metrics endpoint unreachable: {exc}") from exc
