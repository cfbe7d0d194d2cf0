"""Poison at 1 % of a valid stream: every bad message dead-lettered with its reason, every valid
one stored, and the drain rate compared with the same stream without poison."""

from __future__ import annotations

import json
import secrets
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import amqp  # type: ignore[import-untyped]
import pika
import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.outcome import stored_rows
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_worker.topology import declare

from .harness import (
    QUEUE,
    Progress,
    Tally,
    WorkerPool,
    drain,
    fill,
    topology,
)
from .report import Figures
from .workload import GOOD, POISON_KINDS, Workload, build

pytestmark = pytest.mark.integration

WORKERS = 2


# Clean and poisoned drains alternate, a fresh pipeline each: the machine's own pace moves
# both drains of a pair alike, so the pair's ratio shows the poison's cost; the median of the
# pairs keeps one slow moment from deciding the figure.
PAIRS = 5


@pytest.fixture
def pipelines(
    rabbitmq: RabbitMQ, postgres: PostgreSQL, migrated_template: str
) -> Iterator[Callable[[], tuple[Vhost, str]]]:
    """Makes fresh virtual hosts with fresh migrated databases, removed after the test."""
    names: list[str] = []

    def make() -> tuple[Vhost, str]:
        name = f"poison-{uuid.uuid4().hex[:10]}"
        names.append(name)
        vhost = Vhost(name, rabbitmq.create_vhost(name))
        return vhost, postgres.create_database(name.replace("-", "_"), template=migrated_template)

    yield make
    for name in names:
        rabbitmq.delete_vhost(name)
        postgres.drop_database(name.replace("-", "_"))


def drain_rate(workload: Workload, vhost: Vhost, dsn: str, state: Path) -> tuple[float, Tally]:
    layout = topology()
    fill(vhost, workload.messages, layout)
    pool = WorkerPool(state, vhost.url, dsn, layout)
    try:
        # Sampled often: a batch settles every few milliseconds and the drain lasts seconds.
        with Progress(pool, interval=0.02) as progress:
            pool.start(WORKERS)
            consuming = time.monotonic()
            tally = drain(workload, dsn, vhost, layout, pool, timeout=300)
    finally:
        pool.stop()
    return progress.steady_rate(len(workload.messages), since=consuming), tally


def assert_all_accounted(tally: Tally, workload: Workload, valid: int) -> None:
    assert tally.lost == 0, tally.problems()
    assert tally.duplicated == 0, tally.problems()
    # Nothing killed a worker: every dead-letter copy was acked once confirmed.
    assert tally.dead_letters_repeated == 0, tally.problems()
    assert tally.valid_dead_lettered == [], tally.problems()
    assert tally.wrong_reasons == {}, tally.problems()
    assert tally.stored == valid
    assert tally.dead_lettered == len(workload.poison)
    assert tally.unexplained == []
    if workload.poison:
        assert set(tally.reasons) == set(workload.poison.values())


def totals(tallies: list[Tally], scenario: str, notes: str) -> Figures:
    """One report row for several drains of the same stream: their sums."""
    return Figures(
        scenario=scenario,
        messages_in=sum(tally.messages_in for tally in tallies),
        stored=sum(tally.stored for tally in tallies),
        dead_lettered=sum(tally.dead_lettered for tally in tallies),
        lost=sum(tally.lost for tally in tallies),
        duplicated=sum(tally.duplicated for tally in tallies),
        dead_letters_repeated=sum(tally.dead_letters_repeated for tally in tallies),
        recovery="n/a",
        notes=notes,
    )


@pytest.mark.parametrize(
    "valid",
    [
        pytest.param(20_000, id="20k-messages"),
        pytest.param(80_000, id="80k-messages", marks=pytest.mark.slow),
    ],
)
def test_poison_is_dead_lettered_and_the_valid_stream_stored(
    pipelines: Callable[[], tuple[Vhost, str]],
    tmp_path: Path,
    fault_report: Callable[[Figures], None],
    valid: int,
) -> None:
    clean, poisoned = build(valid), build(valid, poison_share=0.01)
    ratios: list[float] = []
    poisoned_rates: list[float] = []
    tallies: list[Tally] = []
    for pair in range(PAIRS):
        # Alternate which drain goes first, so that neither always meets a warmer machine.
        order = (clean, poisoned) if pair % 2 == 0 else (poisoned, clean)
        rates: dict[bool, float] = {}
        for number, workload in enumerate(order):
            vhost, dsn = pipelines()
            rate, tally = drain_rate(workload, vhost, dsn, tmp_path / f"{pair}-{number}")
            assert_all_accounted(tally, workload, valid)
            assert vhost.depth(QUEUE) == 0
            rates[workload is poisoned] = rate
            if workload is poisoned:
                tallies.append(tally)
        ratios.append(rates[True] / rates[False])
        poisoned_rates.append(rates[True])
    fault_report(
        totals(
            tallies,
            scenario="1 % poison in a valid stream",
            notes=(
                f"{POISON_KINDS} kinds of poison; {PAIRS} drains of {len(poisoned.messages):,} "
                f"messages, each paired with one of the same stream without poison; "
                f"{WORKERS} workers drain {statistics.median(poisoned_rates):,.0f} msg/s "
                f"(median), {statistics.median(ratios):.0%} of the clean drain's rate "
                f"(median of the pairs: {', '.join(f'{ratio:.0%}' for ratio in ratios)})"
            ),
        )
    )


@pytest.fixture
def producer(rabbitmq: RabbitMQ, vhost: Vhost) -> Iterator[Vhost]:
    """The test's virtual host as another broker user, the way a scraper has its own login."""
    user, password = f"scraper-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
    with rabbitmq.management() as api:
        api.put(f"/users/{user}", json={"password": password, "tags": ""}).raise_for_status()
        api.put(
            f"/permissions/{quote(vhost.name, safe='')}/{user}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
    yield Vhost(
        vhost.name,
        f"amqp://{user}:{password}@{rabbitmq.host}:{rabbitmq.port}/{quote(vhost.name, safe='')}",
    )
    with rabbitmq.management() as api:
        api.delete(f"/users/{user}")


def test_a_message_stamped_with_its_producers_user_is_dead_lettered(
    producer: Vhost, vhost: Vhost, database: str, tmp_path: Path
) -> None:
    # RabbitMQ checks user_id against the publishing login: the scraper's own user here.
    user = producer.url.split("//", 1)[1].split(":", 1)[0]
    layout = topology()
    with vhost.channel() as channel:
        declare(channel, layout)
    stamped = pika.BasicProperties(
        content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent, user_id=user
    )
    pool = WorkerPool(tmp_path, vhost.url, database, layout)
    pool.start(1)
    try:
        producer.publish(layout.exchange, QUEUE, [b"{not json", json.dumps(GOOD).encode()], stamped)
        pool.wait_handled(2, timeout=30)
        connections = pool.counter("matchops_worker_broker_connections_total")
    finally:
        pool.stop()
    (dead,) = vhost.take(layout.dead_letter_queue)
    assert dead.body == b"{not json"
    assert dead.headers["x-matchops-reason"] == "invalid-json"
    assert dead.headers["x-matchops-original-user-id"] == user
    assert len(stored_rows(database)) == 1
    assert connections == 1


def test_a_header_pika_cannot_write_back_does_not_stop_the_worker(
    rabbitmq: RabbitMQ, vhost: Vhost, database: str, tmp_path: Path
) -> None:
    # py-amqp (Celery's client) and other clients send doubles; pika reads 1e20 as an integer
    # it cannot write again.
    layout = topology()
    with vhost.channel() as channel:
        declare(channel, layout)
    pool = WorkerPool(tmp_path, vhost.url, database, layout)
    pool.start(1)
    try:
        connection = amqp.Connection(
            host=f"{rabbitmq.host}:{rabbitmq.port}",
            userid=rabbitmq.username,
            password=rabbitmq.password,
            virtual_host=vhost.name,
        )
        connection.connect()
        channel = connection.channel()
        for body in (b"{not json", json.dumps(GOOD).encode()):
            message = amqp.Message(
                body, content_type="application/json", application_headers={"weight": 1e20}
            )
            channel.basic_publish(message, exchange=layout.exchange, routing_key=QUEUE)
        connection.close()
        pool.wait_handled(2, timeout=30)
        assert all(worker.alive() for worker in pool.workers)
    finally:
        pool.stop()
    (dead,) = vhost.take(layout.dead_letter_queue)
    assert dead.headers["x-matchops-reason"] == "invalid-json"
    assert dead.headers["weight"] == "100000000000000000000"
    assert len(stored_rows(database)) == 1
