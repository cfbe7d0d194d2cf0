"""Publishing match messages: persistent, with publisher confirms, plain JSON or Celery tasks."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from matchops_worker.contract import CELERY_TASKS, celery_message
from matchops_worker.topology import Topology, declare


class PublishError(RuntimeError):
    """The broker did not take a message (unroutable, or refused)."""


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


class Publisher:
    """A confirmed publishing channel to one broker."""

    def __init__(self, url: str, target: Target, topology: Topology | None = None) -> None:
        if target.celery_task is not None and target.celery_task not in CELERY_TASKS:
            raise ValueError(
                f"Celery task {target.celery_task!r} is not one the worker accepts: "
                f"{', '.join(CELERY_TASKS)}"
            )
        self.target = target
        self._connection = BlockingConnection(pika.URLParameters(url))
        self._channel: BlockingChannel = self._connection.channel()
        if topology is not None:
            declare(self._channel, topology)
        self._channel.confirm_delivery()

    def publish(self, body: bytes) -> None:
        """Publish one message and wait for the broker's confirm."""
        properties, body = self._envelope(body)
        try:
            self._channel.basic_publish(
                self.target.exchange, self.target.routing_key, body, properties, mandatory=True
            )
        except pika.exceptions.UnroutableError as exc:
            raise PublishError(
                f"exchange {self.target.exchange!r} routes {self.target.routing_key!r} to no "
                "queue: declare the topology first (or pass --declare)"
            ) from exc
        except pika.exceptions.NackError as exc:
            raise PublishError("the broker refused the message (negative confirm)") from exc

    def publish_all(self, bodies: Iterable[bytes]) -> int:
        count = 0
        for body in bodies:
            self.publish(body)
            count += 1
        return count

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
