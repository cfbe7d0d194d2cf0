"""Worker throughput on a realistic season stream, against a real RabbitMQ and PostgreSQL.

Fills a queue with seasons of fixtures (every fixture reported scheduled, then half of them
again as completed with scores) and reports, in one run, messages per second for:

- the worker with its default settings, draining the queue into PostgreSQL;
- the same stream with 1 % invalid messages scattered through it (each copied to the
  dead-letter queue with a publisher confirm), against the clean stream: the two alternate
  a few times (`--pairs`) and each pair gives a ratio, so that the machine's own swings,
  which move both runs of a pair alike, are told apart from the cost of the invalid ones;
- the same stream with 10 % invalid messages: how many dead-letter copies a worker sustains;
- the worker with a larger prefetch (MATCHOPS_PREFETCH=1000, MATCHOPS_BATCH_SIZE=250);
- the worker writing one message per transaction (MATCHOPS_BATCH_SIZE=1);
- raw pika consumption with manual acks and no work at all: the ceiling the broker and the
  client library allow on this machine. It is measured right after each clean run and after
  the large-prefetch run, and each worker run is compared with the raw consume measured
  nearest to it with the same prefetch, since the machine's pace moves between runs.

Broker and database run beside the worker, with their durable defaults (PostgreSQL fsync on,
persistent messages, quorum queue). Run with `make bench`; the figures depend on what else
the machine does, so run it on a quiet machine and compare runs of the same machine only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pika
from matchops_devenv import statedir
from matchops_devenv.broker_tools import Vhost, publish_in_transactions
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.procs import ServiceError
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.worker import WorkerProcess
from matchops_worker.sample import (
    DIVISIONS,
    SeasonPlan,
    invalid_messages,
    scatter,
    season_reports,
)
from matchops_worker.store import migrate
from matchops_worker.topology import Topology, build_topology, declare

AGE_GROUPS = ("U13", "U14", "U15", "U16", "U17", "U19")
SEASONS = ("2024-25", "2025-26", "2026-27", "2027-28")


@dataclass(frozen=True)
class Figure:
    name: str
    messages: int
    seconds: float
    prefetch: int
    # CPU time per message (µs) of the worker, the broker and the database, over the drain.
    cpu: tuple[float, float, float] | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass(frozen=True)
class Servers:
    """The processes whose CPU time a drain is charged: broker and database."""

    broker: RabbitMQ
    database: PostgreSQL

    def cpu_seconds(self, worker: WorkerProcess) -> tuple[float, float, float]:
        return (
            worker.service.cpu_seconds(),
            self.broker.cpu_seconds(),
            self.database.cpu_seconds(),
        )


def season_stream(seasons: int, divisions: int, teams: int) -> list[bytes]:
    """Seasons one after the other, each its fixtures and then half of them completed."""
    stream: list[bytes] = []
    for number, season in enumerate(SEASONS[:seasons]):
        plan = SeasonPlan(
            season=season,
            age_groups=AGE_GROUPS,
            divisions=DIVISIONS[:divisions],
            teams_per_division=teams,
            completed_share=0.5,
            seed=2025 + number,
        )
        stream.extend(json.dumps(report).encode() for report in season_reports(plan))
    return stream


def fill(vhost: Vhost, topology: Topology, messages: list[bytes]) -> None:
    """Publish the stream persistently and wait until the queue holds all of it."""
    properties = pika.BasicProperties(
        content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent
    )
    with vhost.channel() as channel:
        declare(channel, topology)
        channel.queue_purge(topology.queue)
        publish_in_transactions(
            channel,
            topology.exchange,
            topology.routing_keys[0],
            ((body, properties) for body in messages),
        )
    depth = vhost.wait_for_depth(topology.queue, len(messages), timeout=600)
    if depth != len(messages):
        raise RuntimeError(f"queue holds {depth} messages, expected {len(messages)}")


@dataclass(frozen=True)
class Run:
    name: str
    settings: dict[str, str]
    messages: list[bytes]
    invalid: int = 0  # how many of the messages the worker must dead-letter


@dataclass(frozen=True)
class RawRun:
    """Raw pika consumption of the stream with this prefetch."""

    prefetch: int


def nearest_raw(figures: list[Figure], index: int) -> Figure:
    """The raw consume with the same prefetch measured nearest to figures[index] (after first)."""
    prefetch = figures[index].prefetch
    raws = [
        (n, f) for n, f in enumerate(figures) if f.name.startswith("raw") and f.prefetch == prefetch
    ]
    return min(raws, key=lambda pair: (abs(pair[0] - index), pair[0] < index))[1]


def with_invalid(name: str, run: Run, share: float, seed: int = 11) -> Run:
    """The run again with `share` of invalid messages (the sample's kinds) scattered through."""
    bad = invalid_messages(round(len(run.messages) * share), seed=seed)
    return Run(name, run.settings, scatter(run.messages, bad, seed), len(bad))


def drain_with_worker(run: Run, state: Path, vhost: Vhost, dsn: str, servers: Servers) -> Figure:
    """Start `matchops-worker` on the filled queue; time from consuming to the last commit.

    The end is the worker's own last-commit time, so the benchmark reads its metrics only a
    few times a second and does not slow it down by asking. CPU time is read when the worker
    is ready and once every message is handled (so it includes up to one idle poll).
    """
    name, total, invalid = run.name, len(run.messages), run.invalid
    prefetch = int(run.settings.get("MATCHOPS_PREFETCH", "200"))
    worker = WorkerProcess(state, vhost.url, dsn, run.settings, name=name.split(",")[0])
    worker.start(wait_ready=False)
    try:
        _wait(worker.ready, timeout=60, interval=0.002)
        started = time.time()
        cpu_before = servers.cpu_seconds(worker)
        _wait(lambda: _handled(worker) >= total, timeout=3600, interval=0.2)
        cpu_after = servers.cpu_seconds(worker)
        elapsed = worker.counter("matchops_worker_last_commit_timestamp_seconds") - started
        dead = worker.counter("matchops_worker_messages_total", outcome="dead_lettered")
        if dead != invalid:
            raise RuntimeError(
                f"{name}: {dead:.0f} messages dead-lettered, {invalid} expected:\n{worker.log}"
            )
    finally:
        worker.stop()
    cpu = tuple(
        (after - before) / total * 1e6 for before, after in zip(cpu_before, cpu_after, strict=True)
    )
    return Figure(name, total, elapsed, prefetch, (cpu[0], cpu[1], cpu[2]))


def _handled(worker: WorkerProcess) -> float:
    return sum(
        value
        for key, value in worker.metrics().items()
        if key.startswith("matchops_worker_messages_total")
    )


def raw_consume(vhost: Vhost, queue: str, total: int, prefetch: int) -> Figure:
    """Consume with manual acks and nothing else; ack half a prefetch window at a time."""
    connection = pika.BlockingConnection(pika.URLParameters(vhost.url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    window = max(1, prefetch // 2)
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
        if received % window == 0 or received == total:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if received == total:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    elapsed = time.monotonic() - started
    connection.close()
    return Figure(f"raw pika consume, prefetch {prefetch}, no work", total, elapsed, prefetch)


def _wait(check: Callable[[], bool], timeout: float, interval: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The worker's endpoint is not up during its first moments.
        with contextlib.suppress(ServiceError):
            if check():
                return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seasons", type=int, default=2, choices=range(1, len(SEASONS) + 1))
    parser.add_argument("--divisions", type=int, default=7, choices=range(1, len(DIVISIONS) + 1))
    parser.add_argument("--teams", type=int, default=16, help="teams per division")
    parser.add_argument(
        "--single-limit",
        type=int,
        default=5_000,
        help="messages for the one-per-transaction run (it is slow; default: %(default)s)",
    )
    parser.add_argument("--queue-type", default="quorum", choices=("quorum", "classic"))
    parser.add_argument(
        "--pairs",
        type=int,
        default=3,
        choices=range(1, 11),
        metavar="1..10",
        help="clean and 1 %% invalid runs, alternating (default: %(default)s)",
    )
    args = parser.parse_args()

    stream = season_stream(args.seasons, args.divisions, args.teams)
    topology = build_topology("matches", queue_type=args.queue_type)
    base = {"MATCHOPS_QUEUE_TYPE": args.queue_type, "MATCHOPS_LOG_LEVEL": "warning"}
    clean = Run("worker, default settings", base, stream)
    mixed = with_invalid("worker, default settings, 1 % invalid", clean, 0.01)
    pair: list[Run | RawRun] = [clean, RawRun(200), mixed]
    runs: list[Run | RawRun] = [
        *pair * args.pairs,
        with_invalid("worker, default settings, 10 % invalid", clean, 0.10),
        Run(
            "worker, prefetch 1000, batch 250",
            {**base, "MATCHOPS_PREFETCH": "1000", "MATCHOPS_BATCH_SIZE": "250"},
            stream,
        ),
        RawRun(1000),
        Run(
            "worker, one message per transaction",
            {**base, "MATCHOPS_BATCH_SIZE": "1"},
            stream[: args.single_limit],
        ),
    ]
    print(
        f"stream: {len(stream)} messages: {args.seasons} season(s) x {len(AGE_GROUPS)} age "
        f"groups x {args.divisions} divisions x {args.teams} teams, every fixture scheduled "
        f"then half of them completed; {args.queue_type} queue, persistent messages, "
        "PostgreSQL with fsync",
        flush=True,
    )
    figures: list[Figure] = []
    with RabbitMQ() as broker, PostgreSQL() as postgres:
        state = statedir.claim("bench")
        try:
            vhost = Vhost("/", broker.url())
            servers = Servers(broker, postgres)
            for number, run in enumerate(runs):
                if isinstance(run, RawRun):
                    fill(vhost, topology, stream)
                    figures.append(raw_consume(vhost, topology.queue, len(stream), run.prefetch))
                else:
                    fill(vhost, topology, run.messages)
                    dsn = postgres.create_database(f"bench_{number}")
                    migrate(dsn)
                    figures.append(drain_with_worker(run, state, vhost, dsn, servers))
                print(f"  {figures[-1].name}: {figures[-1].rate:.0f} msg/s", flush=True)
        finally:
            statedir.release(state)
    print()
    print(
        f"{'run':<42} {'messages':>9} {'seconds':>8} {'msg/s':>8} {'of raw':>7}"
        f" {'CPU µs/msg: worker':>19} {'broker':>7} {'database':>9}"
    )
    for index, figure in enumerate(figures):
        share = figure.rate / nearest_raw(figures, index).rate
        cpu = "" if figure.cpu is None else " {:>19.0f} {:>7.0f} {:>9.0f}".format(*figure.cpu)
        print(
            f"{figure.name:<42} {figure.messages:>9} {figure.seconds:>8.2f} "
            f"{figure.rate:>8.0f} {share:>7.0%}{cpu}"
        )
    print("('of raw': share of the raw consume with the same prefetch measured nearest to it)")
    shares = [
        figure.rate / nearest_raw(figures, index).rate
        for index, figure in enumerate(figures)
        if figure.name == clean.name
    ]
    print(
        "default settings, share of the raw consume measured right after each run: "
        f"{', '.join(f'{r:.0%}' for r in shares)}; median {statistics.median(shares):.0%}"
    )
    ratios = [
        invalid.rate / plain.rate
        for plain, invalid in zip(
            [f for f in figures if f.name == clean.name],
            [f for f in figures if f.name == mixed.name],
            strict=True,
        )
    ]
    print(
        "1 % invalid messages, share of the clean stream's rate in each pair: "
        f"{', '.join(f'{r:.0%}' for r in ratios)}; median {statistics.median(ratios):.0%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
