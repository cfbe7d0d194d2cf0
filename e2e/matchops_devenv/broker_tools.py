"""Looking into a RabbitMQ virtual host from tests and the demo: depths, messages, publishing."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

# Messages per AMQP transaction when filling a queue in bulk.
FILL_TRANSACTION: Final = 1000


@dataclass(frozen=True)
class Message:
    body: bytes
    properties: pika.BasicProperties
    routing_key: str

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


@dataclass(frozen=True)
class Vhost:
    """One virtual host of a broker, by name and AMQP URL."""

    name: str
    url: str

    @contextmanager
    def channel(self) -> Iterator[BlockingChannel]:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            yield connection.channel()
        finally:
            if connection.is_open:
                connection.close()

    def depth(self, queue: str) -> int:
        """Messages ready in a queue (not counting those delivered and unacked)."""
        with self.channel() as channel:
            result = channel.queue_declare(queue, passive=True)
            count: int = result.method.message_count
            return count

    def wait_for_depth(self, queue: str, count: int, timeout: float = 30.0) -> int:
        """Poll until a queue holds `count` ready messages; return the last depth seen."""
        deadline = time.monotonic() + timeout
        depth = self.depth(queue)
        while depth != count and time.monotonic() < deadline:
            time.sleep(0.1)
            depth = self.depth(queue)
        return depth

    def take(self, queue: str) -> list[Message]:
        """Remove and return every ready message of a queue."""
        messages: list[Message] = []
        with self.channel() as channel:
            while True:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return messages
                messages.append(Message(body, properties, method.routing_key))

    def publish(
        self,
        exchange: str,
        routing_key: str,
        bodies: list[bytes],
        properties: pika.BasicProperties | None = None,
    ) -> None:
        """Publish persistent messages with confirms."""
        props = properties or pika.BasicProperties(
            content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent
        )
        with self.channel() as channel:
            channel.confirm_delivery()
            for body in bodies:
                channel.basic_publish(exchange, routing_key, body, props, mandatory=True)


def publish_in_transactions(
    channel: BlockingChannel,
    exchange: str,
    routing_key: str,
    messages: Iterable[tuple[bytes, pika.BasicProperties]],
) -> None:
    """Publish messages in AMQP transactions of a thousand.

    A commit returns once the broker has taken the whole transaction, so a queue filled
    this way holds every message (a publisher confirm per message would make filling a
    queue with tens of thousands of messages take minutes on a shared machine; publishing
    with neither loses messages now and then).
    """
    channel.tx_select()
    for number, (body, properties) in enumerate(messages, start=1):
        channel.basic_publish(exchange, routing_key, body, properties)
        if number % FILL_TRANSACTION == 0:
            channel.tx_commit()
    channel.tx_commit()
