"""The publisher: which failures it rides out, and riding one out on a real RabbitMQ."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pika
import pika.exceptions
import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.ports import free_port
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_worker.producer import Publisher, Target, connection_lost
from matchops_worker.topology import build_topology

from .reports import MATCH
from .test_cli import matchops
from .test_worker import wait_until


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (pika.exceptions.StreamLostError("Connection reset by peer"), True),
        (pika.exceptions.AMQPConnectionError("connection refused"), True),
        (pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED"), True),
        (pika.exceptions.ConnectionBlockedTimeout(), True),
        (pika.exceptions.ChannelWrongStateError("channel is closed"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (pika.exceptions.ConnectionClosedByBroker(403, "ACCESS_REFUSED"), False),
        (pika.exceptions.ConnectionClosedByBroker(530, "NOT_ALLOWED - vhost not found"), False),
        (pika.exceptions.ProbableAuthenticationError("bad password"), False),
        (pika.exceptions.ProbableAccessDeniedError("no access"), False),
        (pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no exchange"), False),
        (pika.exceptions.UnroutableError([]), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_only_a_broker_that_went_away_is_worth_a_reconnect(error: Exception, lost: bool) -> None:
    assert connection_lost(error) is lost


def numbered(count: int) -> list[bytes]:
    return [json.dumps({**MATCH, "external_match_id": f"m{i}"}).encode() for i in range(count)]


@pytest.mark.integration
def test_a_dropped_connection_delays_publishing_and_loses_nothing(
    rabbitmq: RabbitMQ, vhost: Vhost
) -> None:
    topology = build_topology("matches", queue_type="classic")
    messages = numbered(1000)
    dropped = threading.Event()

    def stream() -> Iterator[bytes]:
        for number, message in enumerate(messages):
            if number == 400:
                # The broker drops the connection between two messages.
                assert dropped.wait(30), "the connection was not closed"
            yield message

    retries: list[BaseException] = []
    published: list[int] = []
    target = Target(topology.exchange, "matches")
    with Publisher(
        vhost.url, target, topology, on_retry=lambda exc, delay: retries.append(exc)
    ) as publisher:
        sender = threading.Thread(target=lambda: published.append(publisher.publish_all(stream())))
        sender.start()
        wait_until(lambda: rabbitmq.close_connections(vhost.name) >= 1, what="connection closed")
        dropped.set()
        sender.join(60)
        assert published == [1000]
        assert publisher.reconnects >= 1
    assert retries
    assert all(connection_lost(exc) for exc in retries)
    bodies = [m.body for m in vhost.take("matches")]
    # At least once: a message whose confirm went down with the connection is sent again.
    assert set(bodies) == set(messages)
    assert len(bodies) - len(messages) <= publisher.reconnects


@pytest.mark.integration
def test_refused_credentials_fail_at_once(vhost: Vhost) -> None:
    url = vhost.url.replace("://matchops:", "://matchops:wrong", 1)
    assert url != vhost.url
    retries: list[BaseException] = []
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        Publisher(url, Target("matches", "matches"), on_retry=lambda e, d: retries.append(e))
    assert retries == []


@pytest.mark.integration
def test_a_publish_retries_a_missing_broker_then_says_why() -> None:
    # Nothing listens there: the command keeps trying for --retry-for seconds.
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    result = matchops(
        "publish", "--retry-for", "1.5", "-", url=url, stdin=json.dumps(MATCH).encode()
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) >= 3, result.stderr
    assert all("the broker is unavailable" in line for line in lines[:-1]), result.stderr
    assert lines[-1].startswith("matchops: cannot reach the broker (retried for 1.5s)")


def test_a_publisher_refuses_an_unknown_celery_task() -> None:
    with pytest.raises(ValueError, match="is not one the worker accepts"):
        Publisher("amqp://127.0.0.1:1/", Target("matches", "matches", "other.task"))
