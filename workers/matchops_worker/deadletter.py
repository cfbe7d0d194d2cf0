"""Copies of invalid messages to the dead-letter queue, confirmed off the consuming thread.

A publisher confirm from a quorum queue waits for the broker to write the copy to disk:
milliseconds that, spent on the consuming thread for every invalid message, slowed a stream
with 1 % poison by a third. The sender publishes from its own thread and connection; the
consumer acknowledges an invalid message only once its copy is confirmed, and never
acknowledges past a copy still on its way.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from matchops_worker.broker import connection_parameters

log = logging.getLogger(__name__)


class DeadLetterSender:
    """Publishes persistent copies with publisher confirms, one at a time, in its own thread."""

    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dead-letter")
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def submit(self, queue: str, body: bytes, properties: pika.BasicProperties) -> Future[None]:
        """Send a copy to `queue`; the future is done once the broker confirmed it."""
        return self._executor.submit(self._send, queue, body, properties)

    def close(self) -> None:
        """Wait for the copies on their way, then close the connection."""
        self._executor.submit(self._disconnect)
        self._executor.shutdown(wait=True)

    def _send(self, queue: str, body: bytes, properties: pika.BasicProperties) -> None:
        try:
            self._publish(queue, body, properties)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.ChannelClosed, OSError):
            # The connection may have gone stale between two invalid messages: one new one.
            log.debug("dead-letter connection lost, reconnecting", exc_info=True)
            self._disconnect()
            self._publish(queue, body, properties)

    def _publish(self, queue: str, body: bytes, properties: pika.BasicProperties) -> None:
        channel = self._open()
        channel.basic_publish("", queue, body, properties, mandatory=True)

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._disconnect()
        self._connection = BlockingConnection(connection_parameters(self.amqp_url, "dead-letter"))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        return self._channel

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (pika.exceptions.AMQPError, OSError):
                log.debug("dead-letter connection did not close cleanly", exc_info=True)


def copy_properties(
    original: pika.BasicProperties, headers: dict[str, Any]
) -> pika.BasicProperties:
    """A message's properties for its persistent copy, with the worker's headers."""
    return pika.BasicProperties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=pika.DeliveryMode.Persistent,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        type=original.type,
        app_id=original.app_id,
    )
