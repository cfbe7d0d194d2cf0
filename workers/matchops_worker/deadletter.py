"""Copies of invalid messages to the dead-letter queue, confirmed off the consuming thread.

A publisher confirm from a quorum queue waits for the broker to write the copy to disk. Spent
on the consuming thread for every invalid message, that wait slowed a stream with 1 % poison
by a third; spent one copy after another, even on a thread of its own, it capped the copies
at a few hundred a second and a stream with 10 % poison ran at a third of its clean rate.

The sender keeps its own connection and thread (pika's asynchronous adapter, which also keeps
the connection's heartbeats while no invalid message comes) and pipelines the copies: each
is published at once and its future completes when the broker confirms it, however many are
on their way. The consumer acknowledges an invalid message only once its copy is confirmed,
and never acknowledges past a copy still on its way.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel

from matchops_worker.broker import connection_parameters

log = logging.getLogger(__name__)

# How long closing waits for copies still on their way before it gives up on them (the
# consumer waits for every copy before it closes the sender, so this bounds only failures).
CLOSE_TIMEOUT: Final = 30.0


class CopyFailed(pika.exceptions.AMQPError):  # type: ignore[misc] # pika is untyped
    """The broker refused a copy (nack) or lost the connection before confirming it."""


class DeadLetterSender:
    """Publishes persistent copies with publisher confirms, many at once, from its own thread.

    A connection is opened at the first copy and again after one is lost; a copy on its way
    when the connection goes fails (the consumer then ends its session, and the original
    message comes back from the queue).
    """

    def __init__(self, amqp_url: str) -> None:
        self.amqp_url = amqp_url
        self._lock = threading.Lock()
        self._link: _Link | None = None

    def submit(self, queue: str, body: bytes, properties: pika.BasicProperties) -> Future[None]:
        """Send a copy to `queue`; the future is done once the broker confirmed it."""
        future: Future[None] = Future()
        with self._lock:
            if self._link is None or self._link.ended:
                self._link = _Link(connection_parameters(self.amqp_url, "dead-letter"))
            link = self._link
        link.publish(queue, body, properties, future)
        return future

    def close(self) -> None:
        """Wait for the copies on their way, then close the connection."""
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            link.close(CLOSE_TIMEOUT)


class _Link:
    """One connection with a confirming channel, its I/O loop turning in its own thread.

    `publish` and `close` may be called from any thread: they hand their work to the loop
    through an inbox. Everything else runs on the loop's thread.
    """

    def __init__(self, parameters: pika.URLParameters) -> None:
        self.ended = False
        self._lock = threading.Lock()
        self._stopped = False  # the loop has returned: nothing handed to it would run
        self._inbox: list[_Copy] = []
        self._closing = False
        self._error: BaseException | None = None
        self._channel: Channel | None = None
        # Copies taken from the inbox before the channel is open, then the ones awaiting a
        # confirm by delivery tag (the channel numbers its publishes from 1).
        self._waiting: list[_Copy] = []
        self._unconfirmed: OrderedDict[int, Future[None]] = OrderedDict()
        self._published = 0
        self._connection = SelectConnection(
            parameters,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_error,
            on_close_callback=self._on_connection_closed,
        )
        self._thread = threading.Thread(target=self._run, name="dead-letter", daemon=True)
        self._thread.start()

    def publish(
        self, queue: str, body: bytes, properties: pika.BasicProperties, future: Future[None]
    ) -> None:
        with self._lock:
            if not self._stopped:
                self._inbox.append((queue, body, properties, future))
                self._connection.ioloop.add_callback_threadsafe(self._take_inbox)
                return
        future.set_exception(CopyFailed(f"dead-letter connection lost: {self._error}"))

    def close(self, timeout: float) -> None:
        with self._lock:
            if not self._stopped:
                self._connection.ioloop.add_callback_threadsafe(self._close_when_confirmed)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("dead-letter connection did not close in time; copies may be unconfirmed")

    def _run(self) -> None:
        try:
            self._connection.ioloop.start()
        finally:
            with self._lock:
                self._stopped = True
                self.ended = True
                left, self._inbox = self._inbox, []
            error = CopyFailed(f"dead-letter connection lost: {self._error}")
            for *_, future in [*left, *self._waiting]:
                future.set_exception(error)
            for future in self._unconfirmed.values():
                future.set_exception(error)
            self._connection.ioloop.close()

    # --- on the loop's thread -------------------------------------------------------------

    def _take_inbox(self) -> None:
        with self._lock:
            taken, self._inbox = self._inbox, []
        for copy in taken:
            self._publish(*copy)

    def _publish(
        self, queue: str, body: bytes, properties: pika.BasicProperties, future: Future[None]
    ) -> None:
        if self._error is not None:
            future.set_exception(CopyFailed(f"dead-letter connection lost: {self._error}"))
        elif self._channel is None:
            self._waiting.append((queue, body, properties, future))
        else:
            try:
                self._channel.basic_publish("", queue, body, properties, mandatory=True)
            except (pika.exceptions.AMQPError, OSError) as exc:
                future.set_exception(CopyFailed(f"dead-letter publish failed: {exc}"))
                return
            self._published += 1
            self._unconfirmed[self._published] = future

    def _on_connection_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_returned)
        channel.confirm_delivery(self._on_confirm, callback=lambda _: self._on_confirming(channel))

    def _on_confirming(self, channel: Channel) -> None:
        self._channel = channel
        waiting, self._waiting = self._waiting, []
        for copy in waiting:
            self._publish(*copy)
        if self._closing:
            self._close_when_confirmed()

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
        if self._closing:
            self._close_when_confirmed()

    def _on_returned(
        self,
        _channel: Channel,
        method: pika.spec.Basic.Return,
        _properties: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        # Every copy goes to the dead-letter queue: one unroutable means that queue is gone.
        self._fail(
            pika.exceptions.UnroutableError([]),
            f"the dead-letter queue {method.routing_key!r} does not exist "
            f"({method.reply_code} {method.reply_text})",
        )

    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        self._channel = None
        if self._closing and isinstance(reason, pika.exceptions.ChannelClosedByClient):
            return  # closed by `close`: every copy was confirmed first
        self._fail(reason, f"dead-letter channel closed: {reason}")

    def _on_connection_error(self, _connection: SelectConnection, error: BaseException) -> None:
        self._fail(error, f"cannot connect for dead-letter copies: {error}")
        self._connection.ioloop.stop()

    def _on_connection_closed(self, _connection: SelectConnection, reason: BaseException) -> None:
        if self._unconfirmed or self._waiting or not self._closing:
            self._fail(reason, f"dead-letter connection lost: {reason}")
        self._connection.ioloop.stop()

    def _fail(self, error: BaseException, message: str) -> None:
        """Fail every copy in hand and end the link: the next copy opens a new connection."""
        self.ended = True
        if self._error is None:
            self._error = error
            log.warning("dead-letter copies failed", extra={"error": message})
        pending = [future for *_, future in self._waiting]
        pending.extend(self._unconfirmed.values())
        self._waiting.clear()
        self._unconfirmed.clear()
        for future in pending:
            future.set_exception(
                error if isinstance(error, pika.exceptions.UnroutableError) else CopyFailed(message)
            )
        self._close_connection()

    def _close_when_confirmed(self) -> None:
        self._closing = True
        self.ended = True
        if not self._unconfirmed and not self._waiting:
            self._close_connection()

    def _close_connection(self) -> None:
        if self._connection.is_closed:
            self._connection.ioloop.stop()
        elif not self._connection.is_closing:
            self._connection.close()


_Copy = tuple[str, bytes, pika.BasicProperties, Future[None]]


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
