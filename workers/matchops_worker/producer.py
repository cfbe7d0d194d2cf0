"""Publishing match messages: persistent, with publisher confirms, plain JSON or Celery tasks."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from matchops_worker.backoff import Backoff
from matchops_worker.broker import connection_parameters
from matchops_worker.contract import CELERY_TASKS, celery_message
from matchops_worker.topology import Topology, declare


class PublishError(RuntimeError):
    """The broker did not take a message (unroutable, refused, or unreachable for too long)."""


# A broker that refuses the connection outright: waiting for it changes nothing.
_REFUSALS = (
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
)
# ACCESS_REFUSED, NOT_ALLOWED (no such vhost, or no access to it).
_REFUSAL_CODES = frozenset({403, 530})


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` means the broker went away (worth a reconnect), not that it refused us."""
    if isinstance(exc, _REFUSALS):
        return False
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return exc.reply_code not in _REFUSAL_CODES
    return isinstance(
        exc,
        (
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.ChannelWrongStateError,
            OSError,
        ),
    )


@dataclass(frozen=True)
class Target:
    """Where messages go, and in which format."""

    exchange: str
    routing_key: str
    celery_task: str | None = None


def read_messages(text: bytes) -> Iterator[bytes]:
    """Messages from a JSON array (each element) or JSON lines (each non-blank line, as is)."""
    stripped = text.lstrip()
    if stripped.startswith(b"["):
        for item in json.loads(stripped):
            yield json.dumps(item).encode()
        return
    for line in text.splitlines():
        if line.strip():
            yield line.strip()


def _ignore(exc: BaseException, delay: float) -> None:
    """The default `on_retry`: say nothing."""


class Publisher:
    """A confirmed publishing channel to one broker, reopened when the connection is lost.

    A broker that goes away (restart, network reset, connection closed) delays publishing by
    up to `retry_for` seconds of reconnecting with backoff; after that, or when the broker
    refuses the credentials or the virtual host, `PublishError` says why. A message whose
    confirm was lost with the connection is sent again on the next one: delivery is at least
    once, and the worker's idempotent upsert makes a repeat harmless.
    """

    def __init__(
        self,
        url: str,
        target: Target,
        topology: Topology | None = None,
        *,
        retry_for: float = 60.0,
        on_retry: Callable[[BaseException, float], None] = _ignore,
    ) -> None:
        if target.celery_task is not None and target.celery_task not in CELERY_TASKS:
            raise ValueError(
                f"Celery task {target.celery_task!r} is not one the worker accepts: "
                f"{', '.join(CELERY_TASKS)}"
            )
        self.target = target
        self.reconnects = 0
        self._parameters = connection_parameters(url, role="publisher")
        self._topology = topology
        self._retry_for = retry_for
        self._on_retry = on_retry
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._with_retries(lambda channel: None)

    def publish(self, body: bytes) -> None:
        """Publish one message and wait for the broker's confirm."""
        properties, body = self._envelope(body)
        self._with_retries(lambda channel: self._send(channel, properties, body))

    def publish_all(self, bodies: Iterable[bytes]) -> int:
        count = 0
        for body in bodies:
            self.publish(body)
            count += 1
        return count

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _with_retries(self, action: Callable[[BlockingChannel], None]) -> None:
        """Run `action` on an open channel, reconnecting while the broker is away."""
        backoff = Backoff()
        deadline: float | None = None
        while True:
            try:
                action(self._open())
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                if not connection_lost(exc):
                    raise
                self.close()
                now = time.monotonic()
                deadline = now + self._retry_for if deadline is None else deadline
                if now >= deadline:
                    raise PublishError(
                        f"cannot reach the broker (retried for {self._retry_for:g}s): {exc!r}"
                    ) from exc
                delay = min(backoff.next(), deadline - now)
                self._on_retry(exc, delay)
                time.sleep(delay)
                self.reconnects += 1

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._connection = BlockingConnection(self._parameters)
        channel = self._connection.channel()
        if self._topology is not None:
            declare(channel, self._topology)
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def _send(
        self, channel: BlockingChannel, properties: pika.BasicProperties, body: bytes
    ) -> None:
        try:
            channel.basic_publish(
                self.target.exchange, self.target.routing_key, body, properties, mandatory=True
            )
        except pika.exceptions.UnroutableError as exc:
            raise PublishError(
                f"exchange {self.target.exchange!r} routes {self.target.routing_key!r} to no "
                "queue: declare the topology first (or pass --declare)"
            ) from exc
        except pika.exceptions.NackError as exc:
            raise PublishError("the broker refused the message (negative confirm)") from exc

    def _envelope(self, body: bytes) -> tuple[pika.BasicProperties, bytes]:
        now = int(time.time())
        if self.target.celery_task is not None:
            try:
                match = json.loads(body)
            except ValueError:
                match = None
            if isinstance(match, dict):
                task = celery_message(match, task=self.target.celery_task)
                return (
                    pika.BasicProperties(
                        content_type=task.content_type,
                        content_encoding=task.content_encoding,
                        headers=task.headers,
                        correlation_id=task.correlation_id,
                        delivery_mode=pika.DeliveryMode.Persistent,
                        priority=0,
                    ),
                    task.body,
                )
        return (
            pika.BasicProperties(
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=str(uuid.uuid4()),
                timestamp=now,
            ),
            body,
        )
