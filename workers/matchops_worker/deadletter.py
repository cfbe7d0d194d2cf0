"""Copies of invalid messages to the dead-letter queue, confirmed without waiting for them.

A publisher confirm from a quorum queue waits for the broker to write the copy to disk. Waited
for on the consuming thread, copy after copy, that slowed a stream with 1 % poison by a third
and capped the copies at a few hundred a second. A sender with its own connection and thread
costs about a millisecond of worker CPU per copy in thread hand-offs alone.

So the copies go out on a confirming channel of the consumer's own connection, through pika's
asynchronous channel under the blocking one: a publish returns at once, and the broker's
confirms arrive while the consumer serves its connection, completing each copy's future on the
consuming thread, however many copies are on their way. The consumer acknowledges an invalid
message only once its copy is confirmed, and never acknowledges past a copy still on its way.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingConnection
from pika.channel import Channel

log = logging.getLogger(__name__)

# The headers a worker adds to the messages it republishes: its verdict on a dead letter
# (reason, error), the retries it went through, and where its producer published it.
REASON_HEADER: Final = "x-matchops-reason"
ERROR_HEADER: Final = "x-matchops-error"
ATTEMPTS_HEADER: Final = "x-matchops-attempts"
ROUTING_KEY_HEADER: Final = "x-matchops-original-routing-key"
EXCHANGE_HEADER: Final = "x-matchops-original-exchange"
USER_ID_HEADER: Final = "x-matchops-original-user-id"
# On a dead-letter copy made from a redelivery: an earlier copy may exist.
REDELIVERED_HEADER: Final = "x-matchops-redelivered"

# How long opening the channel waits for the broker to switch on confirms.
OPEN_TIMEOUT: Final = 30.0


class CopyFailed(pika.exceptions.AMQPError):  # type: ignore[misc] # pika is untyped
    """The broker refused a copy (nack) or the channel went before confirming it."""


class DeadLetterChannel:
    """Publishes persistent copies with publisher confirms, many at once, on one connection.

    Everything runs on the thread that owns the connection. A copy whose channel closes, or
    that the broker returns as unroutable, fails with every other copy on its way, and so does
    any later one: the consumer then ends its session, and the originals come back from the
    queue.
    """

    def __init__(self, connection: BlockingConnection, timeout: float = OPEN_TIMEOUT) -> None:
        # pika's asynchronous channel under the blocking one: its publishes do not wait.
        self._channel: Channel = connection.channel()._impl
        self._unconfirmed: OrderedDict[int, Future[None]] = OrderedDict()
        self._published = 0  # the channel numbers its publishes from 1 once confirms are on
        self._error: CopyFailed | pika.exceptions.UnroutableError | None = None
        self._channel.add_on_return_callback(self._on_returned)
        self._channel.add_on_close_callback(self._on_closed)
        selected: list[object] = []
        self._channel.confirm_delivery(self._on_confirm, callback=selected.append)
        deadline = time.monotonic() + timeout
        while not selected:
            if self._error is not None:
                raise self._error
            if time.monotonic() >= deadline:
                raise CopyFailed(f"the broker did not switch on confirms within {timeout:g}s")
            connection.process_data_events(time_limit=0.1)

    @property
    def on_their_way(self) -> int:
        """Copies published and not yet confirmed."""
        return len(self._unconfirmed)

    def publish(self, queue: str, body: bytes, properties: pika.BasicProperties) -> Future[None]:
        """Send a copy to `queue`; the future is done once the broker confirmed it."""
        future: Future[None] = Future()
        if self._error is not None:
            future.set_exception(self._error)
            return future
        try:
            self._channel.basic_publish("", queue, body, properties, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._fail(CopyFailed(f"dead-letter publish failed: {exc}"))
            future.set_exception(self._error)
            return future
        self._published += 1
        self._unconfirmed[self._published] = future
        return future

    def abandon(self, reason: str) -> None:
        """The connection is gone: fail every copy still on its way."""
        self._fail(CopyFailed(f"dead-letter copy unconfirmed: {reason}"))

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        if method.multiple:
            tags = [tag for tag in self._unconfirmed if tag <= method.delivery_tag]
        else:
            tags = [method.delivery_tag] if method.delivery_tag in self._unconfirmed else []
        refused = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            future = self._unconfirmed.pop(tag)
            if refused:
                future.set_exception(CopyFailed("the broker refused the dead-letter copy (nack)"))
            else:
                future.set_result(None)

    def _on_returned(
        self,
        _channel: Channel,
        method: pika.spec.Basic.Return,
        _properties: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        # Every copy goes to the dead-letter queue: one unroutable means that queue is gone.
        log.warning(
            "dead-letter copies failed",
            extra={
                "error": f"the dead-letter queue {method.routing_key!r} does not exist "
                f"({method.reply_code} {method.reply_text})"
            },
        )
        self._fail(pika.exceptions.UnroutableError([]))

    def _on_closed(self, _channel: Channel, reason: BaseException) -> None:
        if self._unconfirmed:
            log.warning("dead-letter copies failed", extra={"error": f"channel closed: {reason}"})
        self._fail(CopyFailed(f"dead-letter channel closed: {reason}"))

    def _fail(self, error: CopyFailed | pika.exceptions.UnroutableError) -> None:
        if self._error is None:
            self._error = error
        unconfirmed = list(self._unconfirmed.values())
        self._unconfirmed.clear()
        for future in unconfirmed:
            future.set_exception(error)


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
