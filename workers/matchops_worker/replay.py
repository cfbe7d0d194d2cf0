"""Dead letters back to where their producers published them, once their cause is fixed.

`matchops replay` takes each message the dead-letter queue holds when it starts, once. A
message whose reason is selected is published again, persistent and confirmed, to the
exchange and routing key it first came with, without the worker's verdict (reason, error,
attempts): the worker treats it as a new message. Any other message goes back to the end of
the dead-letter queue, in its order. The original is acknowledged only after the broker
confirmed its copy, so a replay that stops half-way loses nothing; at worst a message is
found twice, which the idempotent upsert makes harmless.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import pika
from pika.adapters.blocking_connection import BlockingChannel

from matchops_worker.broker import connection_parameters
from matchops_worker.deadletter import (
    ATTEMPTS_HEADER,
    ERROR_HEADER,
    EXCHANGE_HEADER,
    REASON_HEADER,
    REDELIVERED_HEADER,
    ROUTING_KEY_HEADER,
    copy_properties,
)
from matchops_worker.topology import Topology

# The worker's verdict on a message: dropped from a replayed copy.
VERDICT_HEADERS: Final = frozenset(
    {REASON_HEADER, ERROR_HEADER, ATTEMPTS_HEADER, REDELIVERED_HEADER}
)
NO_REASON: Final = "(none)"


@dataclass(frozen=True)
class Destination:
    exchange: str
    routing_key: str


def destination(headers: Mapping[str, Any] | None, topology: Topology) -> Destination:
    """Where a dead letter's producer published it; the pipeline's own key when unknown."""
    headers = headers or {}
    exchange = headers.get(EXCHANGE_HEADER)
    routing_key = headers.get(ROUTING_KEY_HEADER)
    if isinstance(exchange, str) and isinstance(routing_key, str) and routing_key:
        return Destination(exchange, routing_key)
    return Destination(topology.exchange, topology.routing_keys[0])


def replayed_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The message's headers without the worker's verdict (origin headers are kept)."""
    return {key: value for key, value in (headers or {}).items() if key not in VERDICT_HEADERS}


def reason_of(headers: Mapping[str, Any] | None) -> str:
    reason = (headers or {}).get(REASON_HEADER)
    return reason if isinstance(reason, str) and reason else NO_REASON


@dataclass
class ReplayReport:
    replayed: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)

    def summary(self, queue: str) -> dict[str, Any]:
        return {
            "dead_letter_queue": queue,
            "replayed": self.replayed.total(),
            "kept": self.kept.total(),
            "replayed_by_reason": dict(sorted(self.replayed.items())),
            "kept_by_reason": dict(sorted(self.kept.items())),
        }


def replay(
    channel: BlockingChannel,
    topology: Topology,
    reasons: Collection[str] = (),
    limit: int | None = None,
) -> ReplayReport:
    """Replay the dead letters with one of `reasons` (all when empty), `limit` at most.

    `channel` must be in confirm mode. Raises pika's UnroutableError or NackError when the
    broker does not take a copy: the message it was for stays in the dead-letter queue.
    """
    queue = topology.dead_letter_queue
    report = ReplayReport()
    present = channel.queue_declare(queue, passive=True).method.message_count
    for _ in range(present):
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break  # another consumer took the rest
        reason = reason_of(properties.headers)
        chosen = not reasons or reason in reasons
        replayed = chosen and (limit is None or report.replayed.total() < limit)
        if replayed:
            target = destination(properties.headers, topology)
            headers = replayed_headers(properties.headers)
        else:
            target = Destination("", queue)
            headers = dict(properties.headers or {})
        channel.basic_publish(
            target.exchange,
            target.routing_key,
            body,
            copy_properties(properties, headers),
            mandatory=True,
        )
        channel.basic_ack(method.delivery_tag)
        (report.replayed if replayed else report.kept)[reason] += 1
    return report


def open_channel(amqp_url: str) -> tuple[pika.BlockingConnection, BlockingChannel]:
    """A connection and a confirming channel for `replay`."""
    connection = pika.BlockingConnection(connection_parameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel
