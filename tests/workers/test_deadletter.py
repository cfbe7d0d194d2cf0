"""The dead-letter sender on a real RabbitMQ: pipelined confirms, a missing queue, a lost link."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import wait

import pika
import pika.exceptions
import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_worker.deadletter import (
    CLOSE_TIMEOUT,
    CopyFailed,
    DeadLetterSender,
    copy_properties,
)
from matchops_worker.topology import build_topology, declare

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


def test_copies_on_their_way_together_are_each_confirmed_and_stored_in_order(
    vhost: Vhost, dead_letter_queue: str
) -> None:
    sender = DeadLetterSender(vhost.url)
    try:
        futures = [
            sender.submit(dead_letter_queue, f"bad {n}".encode(), PERSISTENT) for n in range(500)
        ]
        done, not_done = wait(futures, timeout=30)
    finally:
        sender.close()
    assert not not_done
    assert all(future.exception() is None for future in done)
    stored = vhost.take(dead_letter_queue)
    assert [message.body for message in stored] == [f"bad {n}".encode() for n in range(500)]
    assert all(message.properties.delivery_mode == 2 for message in stored)


def test_closing_after_confirmed_copies_reports_no_failure(
    vhost: Vhost, dead_letter_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    sender = DeadLetterSender(vhost.url)
    sender.submit(dead_letter_queue, b"bad", PERSISTENT).result(timeout=30)
    with caplog.at_level(logging.WARNING, logger="matchops_worker.deadletter"):
        sender.close()
    said = [r.getMessage() for r in caplog.records if r.name == "matchops_worker.deadletter"]
    assert said == []
    assert [message.body for message in vhost.take(dead_letter_queue)] == [b"bad"]


def test_a_copy_keeps_the_original_properties_with_the_workers_headers(
    vhost: Vhost, dead_letter_queue: str
) -> None:
    original = pika.BasicProperties(
        content_type="application/json", message_id="m-1", app_id="scraper", headers={"a": 1}
    )
    sender = DeadLetterSender(vhost.url)
    try:
        sender.submit(
            dead_letter_queue, b"{", copy_properties(original, {"x-matchops-reason": "x"})
        ).result(timeout=30)
    finally:
        sender.close()
    (message,) = vhost.take(dead_letter_queue)
    assert (message.properties.message_id, message.properties.app_id) == ("m-1", "scraper")
    assert message.headers["x-matchops-reason"] == "x"
    assert "a" not in message.headers


def test_a_missing_dead_letter_queue_fails_the_copy_as_unroutable(vhost: Vhost) -> None:
    sender = DeadLetterSender(vhost.url)
    try:
        copy = sender.submit("no-such-queue", b"bad", PERSISTENT)
        with pytest.raises(pika.exceptions.UnroutableError):
            copy.result(timeout=30)
    finally:
        sender.close()


def test_after_a_lost_connection_the_next_copy_opens_a_new_one(
    rabbitmq: RabbitMQ, vhost: Vhost, dead_letter_queue: str
) -> None:
    sender = DeadLetterSender(vhost.url)
    try:
        sender.submit(dead_letter_queue, b"first", PERSISTENT).result(timeout=30)
        # The management API lists a new connection after a moment.
        wait_until(lambda: rabbitmq.close_connections(vhost.name) >= 1, what="connection closed")
        # The copy handed over while the loss is being noticed either fails (the consumer then
        # ends its session and the original comes back) or goes out on a new connection.
        racing = sender.submit(dead_letter_queue, b"racing", PERSISTENT)
        failed = racing.exception(timeout=30) is not None
        if failed:
            assert isinstance(racing.exception(), CopyFailed)
        sender.submit(dead_letter_queue, b"second", PERSISTENT).result(timeout=30)
    finally:
        sender.close()
    bodies = [message.body for message in vhost.take(dead_letter_queue)]
    assert bodies == ([b"first", b"second"] if failed else [b"first", b"racing", b"second"])


def dead_letter_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "dead-letter" and t.is_alive()}


def test_a_sender_never_used_opens_nothing_and_closes_at_once(vhost: Vhost) -> None:
    before = dead_letter_threads()
    sender = DeadLetterSender(vhost.url)
    assert dead_letter_threads() == before  # the connection opens with the first copy
    closing = threading.Thread(target=sender.close)
    closing.start()
    # With no copy to wait for, closing never waits for CLOSE_TIMEOUT.
    closing.join(timeout=CLOSE_TIMEOUT / 3)
    assert not closing.is_alive()
    assert dead_letter_threads() == before
