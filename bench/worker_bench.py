"""Worker throughput on a realistic season stream, against a real RabbitMQ and PostgreSQL.

Fills a queue with a season (every fixture reported scheduled, then half of them again as
completed with scores) and reports, in one run, messages per second for:

- the worker as configured by default (batches of 200), draining the queue into PostgreSQL;
- the same worker writing one message per transaction (MATCHOPS_BATCH_SIZE=1);
- raw pika consumption with manual acks and no work: the ceiling the broker and client allow.

Broker and database run beside the worker, on this machine, with their durable defaults
(PostgreSQL fsync on). Run with `make bench`; figures vary with what else the machine does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika
from matchops_devenv import statedir
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.worker import WorkerProcess
from matchops_worker.sample import SeasonPlan, season_reports
from matchops_worker.store import migrate
from matchops_worker.topology import Topology, build_topology, declare

AGE_GROUPS = ("U13", "U14", "U15", "U16", "U17", "U19")
DIVISIONS = ("Northeast", "Mid-Atlantic", "Southeast", "Florida", "Central", "Texas", "Southwest")


@dataclass(frozen=True)
class Figure:
    name: str
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def season_stream(divisions: int, teams: int) -> list[bytes]:
    plan = SeasonPlan(
        age_groups=AGE_GROUPS,
        divisions=DIVISIONS[:divisions],
        teams_per_division=teams,
        completed_share=0.5,
    )
    return [json.dumps(report).encode() for report in season_reports(plan)]


def fill(vhost: Vhost, topology: Topology, messages: list[bytes]) -> None:
    """Publish the stream persistently and wait until the queue holds all of it."""
    properties = pika.BasicProperties(
        content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent
    )
    with vhost.channel() as channel:
        declare(channel, topology)
        channel.queue_purge(topology.queue)
        for body in messages:
            channel.basic_publish(topology.exchange, topology.routing_keys[0], body, properties)
    depth = vhost.wait_for_depth(topology.queue, len(messages), timeout=300)
    if depth != len(messages):
        raise RuntimeError(f"queue holds {depth} messages, expected {len(messages)}")


def drain_with_worker(
    name: str,
    state: Path,
    vhost: Vhost,
    dsn: str,
    total: int,
    settings: dict[str, str],
) -> Figure:
    worker = WorkerProcess(state, vhost.url, dsn, settings, name=name)
    worker.start(wait_ready=False)
    try:
        started = _wait(worker.ready, timeout=60, interval=0.005)
        _wait(lambda: _handled(worker) >= total, timeout=3600, interval=0.02)
        elapsed = time.monotonic() - started
        if (dead := worker.counter("matchops_worker_messages_total", outcome="dead_lettered")) > 0:
            raise RuntimeError(f"{name}: {dead:.0f} messages dead-lettered:\n{worker.log}")
    finally:
        worker.stop()
    return Figure(name, total, elapsed)


def _handled(worker: WorkerProcess) -> float:
    metrics = worker.metrics()
    return sum(v for k, v in metrics.items() if k.startswith("matchops_worker_messages_total"))


def raw_consume(vhost: Vhost, queue: str, total: int, prefetch: int) -> Figure:
    """Consume and ack (one multiple-ack per prefetch window) without any other work."""
    connection = pika.BlockingConnection(pika.URLParameters(vhost.url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    received = 0
    started = time.monotonic()

    def on_message(
        ch: pika.adapters.blocking_connection.BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        nonlocal received
        received += 1
        if received % prefetch == 0 or received == total:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if received == total:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    elapsed = time.monotonic() - started
    connection.close()
    return Figure("raw pika consume, no work (ceiling)", total, elapsed)


def _wait(check: Callable[[], bool], timeout: float, interval: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return time.monotonic()
        except Exception:  # noqa: S112 - the worker's endpoint may not be up yet
            pass
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--divisions", type=int, default=7, help="divisions per age group")
    parser.add_argument("--teams", type=int, default=16, help="teams per division")
    parser.add_argument(
        "--single-limit",
        type=int,
        default=10_000,
        help="messages for the one-per-transaction run (it is slow; default: 10000)",
    )
    parser.add_argument("--queue-type", default="quorum", choices=("quorum", "classic"))
    args = parser.parse_args()

    stream = season_stream(args.divisions, args.teams)
    topology = build_topology("matches", queue_type=args.queue_type)
    settings = {"MATCHOPS_QUEUE_TYPE": args.queue_type, "MATCHOPS_LOG_LEVEL": "warning"}
    print(
        f"stream: {len(stream)} messages ({len(AGE_GROUPS)} age groups x {args.divisions} "
        f"divisions x {args.teams} teams, fixtures then half of them completed); "
        f"queue type {args.queue_type}",
        flush=True,
    )
    figures: list[Figure] = []
    with RabbitMQ() as broker, PostgreSQL() as postgres:
        state = statedir.claim("bench")
        try:
            vhost = Vhost("/", broker.url())

            def database(name: str) -> str:
                dsn = postgres.create_database(name)
                migrate(dsn)
                return dsn

            fill(vhost, topology, stream)
            figures.append(
                drain_with_worker(
                    "worker, batches of 200 (default)",
                    state,
                    vhost,
                    database("bench_batched"),
                    len(stream),
                    settings,
                )
            )
            single = stream[: args.single_limit]
            fill(vhost, topology, single)
            figures.append(
                drain_with_worker(
                    "worker, one message per transaction",
                    state,
                    vhost,
                    database("bench_single"),
                    len(single),
                    {**settings, "MATCHOPS_BATCH_SIZE": "1"},
                )
            )
            fill(vhost, topology, stream)
            figures.append(raw_consume(vhost, topology.queue, len(stream), prefetch=200))
        finally:
            statedir.release(state)
    ceiling = figures[-1].rate
    print(f"{'run':<40} {'messages':>9} {'seconds':>8} {'msg/s':>9} {'of raw':>7}")
    for figure in figures:
        print(
            f"{figure.name:<40} {figure.messages:>9} {figure.seconds:>8.2f} "
            f"{figure.rate:>9.0f} {figure.rate / ceiling:>7.0%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
