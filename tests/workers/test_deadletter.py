"""The dead-letter channel on a real RabbitMQ: pipelined confirms, a missing queue, a lost link."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pika
import pika.exceptions
import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_worker.deadletter import CopyFailed, DeadLetterChannel, copy_properties
from matchops_worker.topology import build_topology, declare
from pika.adapters.blocking_connection import BlockingConnection

from .test_worker import wait_until

pytestmark = pytest.mark.integration

PERSISTENT = pika.BasicProperties(
    content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent
)


@pytest.fixture
def dead_letter_queue(vhost: Vhost) -> str:
    topology = build_topology("matches")
    with vhost.channel() as channel:
        declare(channel, topology)
    return topology.dead_letter_queue


@pytest.fixture
def connection(vhost: Vhost) -> Iterator[BlockingConnection]:
    connection = BlockingConnection(pika.URLParameters(vhost.url))
    yield connection
    if connection.is_open:
        connection.close()


def serve_until_settled(
    connection: BlockingConnection, futures: list[Future[None]], timeout: float = 30
) -> None:
    """Serve the connection, as the consumer's loop does, until every copy is settled."""
    deadline = time.monotonic() + timeout
    while not all(future.done() for future in futures):
        assert time.monotonic() < deadline, "copies not settled in time"
        connection.process_data_events(time_limit=0.1)


def test_copies_on_their_way_together_are_each_confirmed_and_stored_in_order(
    vhost: Vhost, dead_letter_queue: str, connection: BlockingConnection
) -> None:
    channel = DeadLetterChannel(connection)
    futures = [
        channel.publish(dead_letter_queue, f"bad {n}".encode(), PERSISTENT) for n in range(500)
    ]
    # Publishing does not wait: the copies are all on their way before the first confirm.
    assert channel.on_their_way == 500
    serve_until_settled(connection, futures)
    assert all(future.exception() is None for future in futures)
    assert channel.on_their_way == 0
    stored = vhost.take(dead_letter_queue)
    assert [message.body for message in stored] == [f"bad {n}".encode() for n in range(500)]
    assert all(message.properties.delivery_mode == 2 for message in stored)


def test_closing_after_confirmed_copies_reports_no_failure(
    vhost: Vhost,
    dead_letter_queue: str,
    connection: BlockingConnection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = DeadLetterChannel(connection)
    copy = channel.publish(dead_letter_queue, b"bad", PERSISTENT)
    serve_until_settled(connection, [copy])
    with caplog.at_level(logging.WARNING, logger="matchops_worker.deadletter"):
        connection.close()
    said = [r.getMessage() for r in caplog.records if r.name == "matchops_worker.deadletter"]
    assert said == []
    assert copy.exception() is None
    assert [message.body for message in vhost.take(dead_letter_queue)] == [b"bad"]


def test_a_copy_keeps_the_original_properties_with_the_workers_headers(
    vhost: Vhost, dead_letter_queue: str, connection: BlockingConnection
) -> None:
    original = pika.BasicProperties(
        content_type="application/json", message_id="m-1", app_id="scraper", headers={"a": 1}
    )
    channel = DeadLetterChannel(connection)
    copy = channel.publish(
        dead_letter_queue, b"{", copy_properties(original, {"x-matchops-reason": "x"})
    )
    serve_until_settled(connection, [copy])
    assert copy.exception() is None
    (message,) = vhost.take(dead_letter_queue)
    assert (message.properties.message_id, message.properties.app_id) == ("m-1", "scraper")
    assert message.headers["x-matchops-reason"] == "x"
    assert "a" not in message.headers


def test_a_missing_dead_letter_queue_fails_the_copy_and_every_later_one(
    vhost: Vhost, connection: BlockingConnection
) -> None:
    channel = DeadLetterChannel(connection)
    copy = channel.publish("no-such-queue", b"bad", PERSISTENT)
    serve_until_settled(connection, [copy])
    with pytest.raises(pika.exceptions.UnroutableError):
        copy.result()
    later = channel.publish("no-such-queue", b"worse", PERSISTENT)
    assert isinstance(later.exception(timeout=0), pika.exceptions.UnroutableError)


def test_a_lost_connection_fails_the_copies_on_their_way(
    rabbitmq: RabbitMQ, vhost: Vhost, dead_letter_queue: str, connection: BlockingConnection
) -> None:
    channel = DeadLetterChannel(connection)
    first = channel.publish(dead_letter_queue, b"first", PERSISTENT)
    serve_until_settled(connection, [first])
    # Handed to the channel, not yet sent: the connection closes before the copy reaches the
    # broker.
    racing = channel.publish(dead_letter_queue, b"racing", PERSISTENT)
    # The management API lists a new connection after a moment.
    wait_until(lambda: rabbitmq.close_connections(vhost.name) >= 1, what="connection closed")
    with pytest.raises((pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError)):
        serve_until_settled(connection, [racing])
    # The copy still unconfirmed fails with its channel (its original comes back from the
    # queue); abandoning the session after that changes nothing, and any later copy fails.
    assert isinstance(racing.exception(timeout=0), CopyFailed)
    channel.abandon("the broker connection closed")
    assert isinstance(racing.exception(timeout=0), CopyFailed)
    later = channel.publish(dead_letter_queue, b"later", PERSISTENT)
    assert isinstance(later.exception(timeout=0), CopyFailed)
    assert [message.body for message in vhost.take(dead_letter_queue)] == [b"first"]
