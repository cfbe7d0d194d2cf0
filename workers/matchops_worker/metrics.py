"""Prometheus metrics and the liveness / readiness endpoints, served on one port."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# The main loop turns at least every second; if it has not for this long, it is stuck.
STALL_SECONDS: Final = 60.0


class Metrics:
    """The worker's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "matchops_worker_messages",
            "Messages handled, by outcome (created, updated, unchanged, stale, superseded, "
            "retried, dead_lettered)",
            ["outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "matchops_worker_dead_letters",
            "Messages sent to the dead-letter queue, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "matchops_worker_retries",
            "Messages sent to a retry queue, by retry queue",
            ["queue"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "matchops_worker_batch_size",
            "Messages per stored batch",
            buckets=(1, 5, 10, 25, 50, 100, 200, 500, 1000, 5000),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "matchops_worker_batch_duration_seconds",
            "Time to store one batch (one transaction, retries of a refused row included)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.database_errors = Counter(
            "matchops_worker_database_errors",
            "Batches the database could not take (connection lost, deadlock, timeout...)",
            registry=self.registry,
        )
        self.broker_connections = Counter(
            "matchops_worker_broker_connections",
            "Connections opened to the broker (more than one means reconnects)",
            registry=self.registry,
        )
        self.broker_connected = Gauge(
            "matchops_worker_broker_connected",
            "1 while consuming from the broker",
            registry=self.registry,
        )
        self.database_available = Gauge(
            "matchops_worker_database_available",
            "1 while the database takes batches",
            registry=self.registry,
        )
        self.last_commit = Gauge(
            "matchops_worker_last_commit_timestamp_seconds",
            "Unix time of the last committed batch",
            registry=self.registry,
        )


class Health:
    """Liveness (the main loop turns) and readiness (consuming, database available)."""

    def __init__(self) -> None:
        self._tick = time.monotonic()
        self.consuming = False
        self.database = False

    def tick(self) -> None:
        self._tick = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._tick < STALL_SECONDS

    def ready(self) -> bool:
        return self.alive() and self.consuming and self.database


def serve(metrics: Metrics, health: Health, port: int, host: str = "") -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz in a daemon thread; port 0 picks a free port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = health.alive()
                self._reply(200 if ok else 503, b"ok\n" if ok else b"main loop stalled\n")
            elif path == "/readyz":
                ok = health.ready()
                self._reply(200 if ok else 503, _readiness_text(health).encode())
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes arrive every few seconds; they are not worth a log line."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _readiness_text(health: Health) -> str:
    if health.ready():
        return "ready\n"
    problems = []
    if not health.consuming:
        problems.append("not consuming from the broker")
    if not health.database:
        problems.append("database unavailable")
    if not health.alive():
        problems.append("main loop stalled")
    return "; ".join(problems) + "\n"
