"""The broker restarted and the database stopped mid-stream: workers wait and reconnect, nothing
is lost, nothing is dead-lettered for a passing cause, and throughput comes back.

Each scenario stops a server of its own (not the session's shared ones) and requires the
workers to settle messages at a steady rate again after the server's return; how long that took
is a figure for the report, not a check.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_worker.store import migrate

from .harness import (
    QUEUE,
    Progress,
    Tally,
    WorkerPool,
    fill,
    finish,
    settle,
    topology,
    wait_until,
)
from .report import Figures, seconds
from .workload import build

pytestmark = pytest.mark.integration

WORKERS = 3
# Retries far shorter than the database outages below: a worker must hold messages while the
# database is away rather than burn through the retry delays and dead-letter them.
RETRY_DELAYS = ("1s", "2s")
# Seconds all workers consume before a fault, to measure their pace.
STEADY = 1.5


@pytest.fixture(scope="module")
def own_broker() -> Iterator[RabbitMQ]:
    """A broker of this module's own, to restart."""
    with RabbitMQ() as broker:
        yield broker


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgreSQL]:
    """A database server of this module's own, to stop."""
    with PostgreSQL(fsync=False) as server:
        yield server


@pytest.fixture
def own_database(own_postgres: PostgreSQL) -> str:
    dsn = own_postgres.create_database(f"faults_{uuid.uuid4().hex[:10]}")
    migrate(dsn)
    return dsn


def outage_figures(
    scenario: str,
    tally: Tally,
    progress: Progress,
    fault: tuple[float, float],
    steady: float,
    notes: str,
) -> tuple[Figures, float | None]:
    """The row for an outage from `fault[0]` to `fault[1]` (monotonic clock), after `steady`
    seconds of all workers consuming; and the seconds from its end until the workers settled
    messages at a steady rate again (None: they never did)."""
    began, ended = fault
    before = progress.rate(began - max(steady, 1.0), began)
    recovered = progress.recovered_after(ended)
    after = progress.rate(ended + recovered, ended + recovered + 2) if recovered else 0.0
    figures = tally.figures(
        scenario=scenario,
        recovery=seconds(recovered),
        notes=f"{notes}; {before:,.0f} msg/s before, {after:,.0f} msg/s after",
    )
    return figures, recovered


def assert_recovered(recovered: float | None) -> None:
    assert recovered is not None, "the workers never settled messages at a steady rate again"


def start_steadily(pool: WorkerPool, vhost: Vhost, total: int) -> float:
    """Start the workers; return once all of them have consumed together for a while (so that
    the pace before a fault is their steady one), or a quarter of the backlog is gone. The
    rest is left for after the fault: workers go on settling while a server stops, and what
    they find afterwards must last long enough to show a steady pace (a second of growth in
    every sample; the short variants leave about three seconds of work).
    Returns how long they consumed together."""
    pool.start(WORKERS)
    started = time.monotonic()
    while time.monotonic() - started < STEADY and vhost.depth(QUEUE) > total * 3 // 4:
        time.sleep(0.05)
    return time.monotonic() - started


def assert_nothing_lost(tally: Tally) -> None:
    assert tally.lost == 0, tally.problems()
    assert tally.duplicated == 0, tally.problems()
    assert tally.dead_lettered == 0, f"dead-lettered for a passing cause: {tally.reasons}"


@pytest.mark.parametrize(
    "valid",
    [
        pytest.param(60_000, id="60k-messages"),
        pytest.param(100_000, id="100k-messages", marks=pytest.mark.slow),
    ],
)
def test_broker_restart_mid_stream(
    own_broker: RabbitMQ,
    database: str,
    tmp_path: Path,
    fault_report: Callable[[Figures], None],
    valid: int,
) -> None:
    workload = build(valid)
    layout = topology()
    name = f"restart-{uuid.uuid4().hex[:8]}"
    vhost = Vhost(name, own_broker.create_vhost(name))
    fill(vhost, workload.messages, layout)
    pool = WorkerPool(tmp_path, vhost.url, database, layout)
    try:
        with Progress(pool) as progress:
            steady = start_steadily(pool, vhost, len(workload.messages))
            queued = vhost.depth(QUEUE)
            began = time.monotonic()
            own_broker.stop()
            own_broker.start()
            ended = time.monotonic()
            wait_until(lambda: all(w.ready() for w in pool.workers), 120, "workers consuming")
            connections = [
                w.counter("matchops_worker_broker_connections_total") for w in pool.workers
            ]
            settle(workload, database, vhost, layout)
        tally = finish(workload, database, vhost, layout, pool)
    finally:
        pool.stop()
    figures, recovered = outage_figures(
        "RabbitMQ restarted mid-stream",
        tally,
        progress,
        (began, ended),
        steady,
        f"stop and start took {ended - began:.0f} s with {queued:,} messages queued (quorum "
        f"queue, persistent messages); {WORKERS} workers",
    )
    fault_report(figures)
    assert_nothing_lost(tally)
    assert_recovered(recovered)
    assert min(connections) >= 2, f"connections opened per worker: {connections}"
    assert vhost.depth(QUEUE) == 0


@pytest.mark.parametrize(
    ("valid", "outage"),
    [
        pytest.param(60_000, 10.0, id="10s-outage"),
        pytest.param(100_000, 30.0, id="30s-outage", marks=pytest.mark.slow),
    ],
)
def test_database_stopped_mid_stream(
    own_postgres: PostgreSQL,
    own_database: str,
    vhost: Vhost,
    tmp_path: Path,
    fault_report: Callable[[Figures], None],
    valid: int,
    outage: float,
) -> None:
    workload = build(valid)
    layout = topology(RETRY_DELAYS)
    fill(vhost, workload.messages, layout)
    pool = WorkerPool(tmp_path, vhost.url, own_database, layout)
    try:
        with Progress(pool) as progress:
            steady = start_steadily(pool, vhost, len(workload.messages))
            began = time.monotonic()
            own_postgres.stop()
            try:
                wait_until(lambda: all(not w.ready() for w in pool.workers), 30, "workers unready")
                time.sleep(max(0.0, outage - (time.monotonic() - began)))
                retried = pool.counter("matchops_worker_messages_total", outcome="retried")
            finally:
                own_postgres.start()
            ended = time.monotonic()
            # The workers probe the database with backoff: allow them a minute to notice.
            settle(workload, own_database, vhost, layout, quiet=60)
        tally = finish(workload, own_database, vhost, layout, pool)
    finally:
        pool.stop()
    figures, recovered = outage_figures(
        f"PostgreSQL stopped for {outage:.0f} s mid-stream",
        tally,
        progress,
        (began, ended),
        steady,
        f"retry delays {', '.join(RETRY_DELAYS)} (shorter than the outage); {retried:.0f} "
        f"messages went through a retry; {WORKERS} workers",
    )
    fault_report(figures)
    assert retried > 0, "the outage did not reach the retry path"
    assert_nothing_lost(tally)
    assert_recovered(recovered)
    assert vhost.depth(QUEUE) == 0
