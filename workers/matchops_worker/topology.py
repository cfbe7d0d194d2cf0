"""The broker topology of one pipeline, as one value, and the function that declares it.

The worker (standalone) and the operator (in a cluster) both build the topology here from the
same few settings, so they never disagree on a name or an argument:

- a durable direct exchange, bound to the main queue with each routing key;
- the main queue: a classic queue has no arguments at all, so Celery producers that re-declare
  it plainly (durable, no arguments) keep working; a quorum queue carries only its type;
- one retry queue per distinct delay, `<queue>.retry.<delay>`: messages wait out the queue's TTL
  and are then dead-lettered through the default exchange back to the main queue;
- the dead-letter queue, where the worker puts messages it cannot store;
- a policy for the main queue with what RabbitMQ may change later without re-declaring it
  (dead-lettering to the dead-letter queue, the delivery limit of a quorum queue).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pika.exceptions

from matchops_worker.durations import format_duration, parse_duration

QueueType = Literal["quorum", "classic"]
QueuePurpose = Literal["main", "retry", "dead-letter"]

QUEUE_TYPES: tuple[QueueType, ...] = ("quorum", "classic")
DEFAULT_RETRY_DELAYS = ("10s", "1m", "5m")
# A quorum queue dead-letters a message redelivered this many times (a message that keeps
# crashing consumers), so it cannot hold back the queue forever.
DEFAULT_DELIVERY_LIMIT = 20
# Policies apply by priority, one per queue; users' catch-all policies usually keep priority 0.
DEFAULT_POLICY_PRIORITY = 10
EXCHANGE_TYPE = "direct"
_MAX_NAME_BYTES = 255


class TopologyError(ValueError):
    """Settings that do not describe a valid topology."""


class TopologyConflict(RuntimeError):  # noqa: N818 - the name other packages import
    """The broker holds an exchange or queue of that name with other arguments or type."""

    def __init__(self, kind: str, name: str, reason: str) -> None:
        super().__init__(f"{kind} {name!r} already exists with other settings: {reason}")
        self.kind = kind
        self.name = name
        self.reason = reason


class TopologyRefused(pika.exceptions.ChannelClosedByBroker):  # type: ignore[misc] # pika is untyped
    """The broker refused a declaration, binding or unbinding for another cause than a conflict.

    Most often 403 ACCESS_REFUSED: the user lacks configure, write or read permission on the
    object. Still a ChannelClosedByBroker, so code that handles the broker's refusals in general
    goes on doing so; `action` says what was refused ("declare queue matches"). The broker
    closes the channel.
    """

    def __init__(self, action: str, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_code, reply_text)
        self.action = action


@dataclass(frozen=True)
class QueueDeclaration:
    """One durable queue and the arguments it is declared with."""

    name: str
    purpose: QueuePurpose
    arguments: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True)
class Policy:
    """A RabbitMQ policy, as the management API's `PUT /api/policies/{vhost}/{name}` takes it."""

    name: str
    pattern: str
    definition: dict[str, Any] = field(hash=False)
    priority: int = DEFAULT_POLICY_PRIORITY
    apply_to: str = "queues"

    def body(self) -> dict[str, Any]:
        """The JSON body for the management API."""
        return {
            "pattern": self.pattern,
            "definition": dict(self.definition),
            "priority": self.priority,
            "apply-to": self.apply_to,
        }


@dataclass(frozen=True)
class Topology:
    """Names and arguments of everything one pipeline needs on the broker."""

    exchange: str
    queue: str
    routing_keys: tuple[str, ...]
    queue_type: QueueType
    retry_delays: tuple[float, ...]
    dead_letter_queue: str
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT

    def retry_queue_name(self, delay: float) -> str:
        return f"{self.queue}.retry.{format_duration(delay)}"

    def retry_queue_for(self, attempt: int) -> str | None:
        """The queue a message goes to for its `attempt`-th retry (1-based); None once exhausted."""
        if attempt < 1:
            raise ValueError(f"retry attempts count from 1, got {attempt}")
        if attempt > len(self.retry_delays):
            return None
        return self.retry_queue_name(self.retry_delays[attempt - 1])

    @property
    def retry_queues(self) -> tuple[str, ...]:
        """The distinct retry queue names, in order of first use."""
        return tuple(dict.fromkeys(self.retry_queue_name(d) for d in self.retry_delays))

    @property
    def queues(self) -> tuple[QueueDeclaration, ...]:
        """Every queue of the pipeline: main, retry queues, dead-letter queue."""
        main = QueueDeclaration(self.queue, "main", self._type_arguments())
        retries = [
            QueueDeclaration(
                self.retry_queue_name(delay),
                "retry",
                {
                    **self._type_arguments(),
                    "x-message-ttl": round(delay * 1000),
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.queue,
                    **self._quorum_dead_letter_arguments(),
                },
            )
            for delay in dict.fromkeys(self.retry_delays)
        ]
        dead = QueueDeclaration(self.dead_letter_queue, "dead-letter", self._type_arguments())
        return (main, *retries, dead)

    @property
    def bindings(self) -> tuple[Binding, ...]:
        return tuple(Binding(self.exchange, self.queue, key) for key in self.routing_keys)

    @property
    def policies(self) -> tuple[Policy, ...]:
        """Policies the operator applies through the management API."""
        definition: dict[str, Any] = {
            "dead-letter-exchange": "",
            "dead-letter-routing-key": self.dead_letter_queue,
        }
        if self.queue_type == "quorum":
            definition["delivery-limit"] = self.delivery_limit
        return (
            Policy(
                name=f"matchops.{self.queue}",
                pattern=f"^{re.escape(self.queue)}$",
                definition=definition,
            ),
        )

    def _type_arguments(self) -> dict[str, Any]:
        # A classic queue gets no arguments at all: Celery re-declares it without any, and
        # RabbitMQ refuses a re-declaration whose arguments differ (406 inequivalent arg).
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    def _quorum_dead_letter_arguments(self) -> dict[str, Any]:
        # Quorum queues dead-letter at most once unless told otherwise; a retry queue must
        # never drop the message it holds, so it dead-letters at least once.
        if self.queue_type != "quorum":
            return {}
        return {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def build_topology(
    queue: str,
    *,
    exchange: str | None = None,
    routing_keys: Sequence[str] | None = None,
    queue_type: str = "quorum",
    retry_delays: Iterable[str | float] = DEFAULT_RETRY_DELAYS,
    dead_letter_queue: str | None = None,
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
) -> Topology:
    """The topology for a queue, with defaults filled in and every name checked."""
    exchange = exchange or queue
    keys = tuple(dict.fromkeys(routing_keys)) if routing_keys else (queue,)
    dead_letter_queue = dead_letter_queue or f"{queue}.dlq"
    if queue_type not in QUEUE_TYPES:
        raise TopologyError(f"queue type {queue_type!r} is not one of {', '.join(QUEUE_TYPES)}")
    delays = tuple(_delay(d) for d in retry_delays)
    if delivery_limit < 1:
        raise TopologyError(f"delivery limit must be at least 1, got {delivery_limit}")
    topology = Topology(
        exchange=exchange,
        queue=queue,
        routing_keys=keys,
        queue_type=queue_type,
        retry_delays=delays,
        dead_letter_queue=dead_letter_queue,
        delivery_limit=delivery_limit,
    )
    _check_names(topology)
    return topology


def _delay(value: str | float) -> float:
    seconds = parse_duration(value) if isinstance(value, str) else float(value)
    if seconds < 0.001:
        raise TopologyError(f"retry delay {value!r} must be at least 1ms")
    return seconds


def _check_names(topology: Topology) -> None:
    for kind, name in [
        ("exchange", topology.exchange),
        *(("queue", q.name) for q in topology.queues),
    ]:
        if not name:
            raise TopologyError(f"{kind} name must not be empty")
        if len(name.encode()) > _MAX_NAME_BYTES:
            raise TopologyError(f"{kind} name {name!r} is longer than {_MAX_NAME_BYTES} bytes")
        if name.startswith("amq."):
            raise TopologyError(f"{kind} name {name!r} uses the broker's reserved prefix 'amq.'")
    if topology.dead_letter_queue == topology.queue:
        raise TopologyError(f"dead-letter queue must differ from the queue {topology.queue!r}")
    for key in topology.routing_keys:
        if len(key.encode()) > _MAX_NAME_BYTES:
            raise TopologyError(f"routing key {key!r} is longer than {_MAX_NAME_BYTES} bytes")


class DeclaringChannel(Protocol):
    """The part of a pika channel that `declare` uses."""

    def exchange_declare(self, exchange: str, exchange_type: str, durable: bool) -> Any: ...

    def queue_declare(self, queue: str, durable: bool, arguments: dict[str, Any] | None) -> Any: ...

    def queue_bind(self, queue: str, exchange: str, routing_key: str) -> Any: ...


class UnbindingChannel(Protocol):
    """The part of a pika channel that `unbind` uses."""

    def queue_unbind(self, queue: str, exchange: str, routing_key: str) -> Any: ...


def declare(channel: DeclaringChannel, topology: Topology) -> None:
    """Declare exchange, queues and bindings; idempotent.

    Raises TopologyConflict when something of the same name exists with other settings, and
    TopologyRefused when the broker refuses for another cause (such as a missing permission);
    the broker closes the channel then, so the caller needs a new one.
    """
    with _refused(f"declare exchange {topology.exchange}", ("exchange", topology.exchange)):
        channel.exchange_declare(
            exchange=topology.exchange, exchange_type=EXCHANGE_TYPE, durable=True
        )
    for queue in topology.queues:
        with _refused(f"declare queue {queue.name}", ("queue", queue.name)):
            channel.queue_declare(
                queue=queue.name, durable=True, arguments=dict(queue.arguments) or None
            )
    for binding in topology.bindings:
        with _refused(f"bind {_describe(binding, 'to')}"):
            channel.queue_bind(
                queue=binding.queue, exchange=binding.exchange, routing_key=binding.routing_key
            )


def unbind(channel: UnbindingChannel, bindings: Iterable[Binding]) -> None:
    """Remove bindings (one that does not exist is no error); TopologyRefused when refused."""
    for binding in bindings:
        with _refused(f"unbind {_describe(binding, 'from')}"):
            channel.queue_unbind(
                queue=binding.queue, exchange=binding.exchange, routing_key=binding.routing_key
            )


def _describe(binding: Binding, preposition: str) -> str:
    return (
        f"queue {binding.queue} {preposition} exchange {binding.exchange} "
        f"with routing key {binding.routing_key!r}"
    )


@contextmanager
def _refused(action: str, declared: tuple[str, str] | None = None) -> Iterator[None]:
    """The broker's refusal of `action` as TopologyRefused, or as TopologyConflict when it is
    406 PRECONDITION_FAILED on the declaration of `declared` (kind, name)."""
    try:
        yield
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406 and declared is not None:
            raise TopologyConflict(*declared, str(exc.reply_text)) from exc
        raise TopologyRefused(action, exc.reply_code, str(exc.reply_text)) from exc
