"""`matchops-worker`: run the worker (default) or apply the database migrations (`migrate`)."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

import prometheus_client
import psycopg

from matchops_worker import logs, store
from matchops_worker.backoff import Backoff
from matchops_worker.config import (
    ConfigError,
    MigrateConfig,
    WorkerConfig,
    load_config,
    load_migrate_config,
)
from matchops_worker.consumer import Worker
from matchops_worker.metrics import Health, Metrics, serve

log = logging.getLogger("matchops_worker")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="matchops-worker",
        description="Consume match messages from RabbitMQ and upsert them into PostgreSQL. "
        "Configured through MATCHOPS_* environment variables (see docs/worker.md).",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="consume the queue (the default)")
    migrate = commands.add_parser(
        "migrate", help="apply database migrations (needs only MATCHOPS_DATABASE_DSN)"
    )
    migrate.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep trying this long while the database is unreachable (default: 60)",
    )
    args = parser.parse_args(argv)
    logs.configure()  # until the settings name a level: a configuration error is logged too
    config: MigrateConfig | WorkerConfig
    try:
        config = load_migrate_config() if args.command == "migrate" else load_config()
    except ConfigError as exc:
        log.error(str(exc))
        return 2
    logs.configure(config.logging_level)
    if isinstance(config, MigrateConfig):
        return run_migrate(config.database_dsn, args.wait)
    return run_worker(config)


def run_migrate(dsn: str, wait: float) -> int:
    deadline = time.monotonic() + wait
    backoff = Backoff(maximum=5.0)
    while True:
        try:
            applied = store.migrate(dsn)
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                log.error("cannot reach the database", extra={"error": str(exc).strip()})
                return 1
            time.sleep(backoff.next())
            continue
        except psycopg.Error as exc:
            log.error("migration failed", extra={"error": str(exc).strip()})
            return 1
        log.info(
            "database schema up to date",
            extra={
                "schema_version": store.LATEST_VERSION,
                "applied": [m.version for m in applied],
            },
        )
        return 0


def run_worker(config: WorkerConfig) -> int:
    for note in config.notes():
        log.info(note)
    # `*_created` samples double the series and tell nothing a dashboard uses.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics, health = Metrics(), Health()
    server = serve(metrics, health, config.metrics_port)
    log.info(
        "worker starting",
        extra={
            "queue": config.topology.queue,
            "metrics_port": server.server_address[1],
            "batch_size": config.batch_limit,
            "batch_wait": config.batch_wait,
        },
    )
    database = store.Store(config.database_dsn, statement_timeout=config.statement_timeout)
    worker = Worker(config, database, metrics, health)

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # What start-up built (modules, models, the connections' machinery) lives as long as the
    # process: frozen, the collector's full passes leave it alone. Otherwise each of them holds
    # the interpreter, the consuming and the writing thread alike, for some 15 ms every few
    # thousand messages.
    gc.freeze()
    try:
        worker.run()
    except Exception:
        # Unacknowledged messages go back to the queue when the process exits.
        log.exception("worker failed")
        return 1
    finally:
        server.shutdown()
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
