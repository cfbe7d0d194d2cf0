"""The consume loop: prefetch, batching, ack after commit, retry and dead-letter, reconnect.

One thread owns the broker connection (pika's BlockingConnection) and turns the loop; one
store thread writes batches to PostgreSQL. While a batch is being written the loop keeps
serving the connection (heartbeats, the next deliveries), so a slow transaction never costs
the connection. Deliveries are settled strictly in arrival order:

- a message that fails validation is copied to the dead-letter queue at once, on a confirming
  channel whose publishes do not wait (see `deadletter`), and acked once the copy is
  confirmed, in the multiple-ack of the batch after it when one follows; no batch is acked
  past a copy still on its way;
- a batch is acked (one multiple-ack) only after its transaction committed;
- a batch the database could not take is republished to the next retry queue (or, once the
  delays are used up, to the dead-letter queue) and acked, and the worker holds further
  batches until the database answers again;
- a report the database refuses (its data at fault) alone goes to the dead-letter queue.

On SIGTERM the consumer is cancelled, the batch in hand is written and acked, and `run`
returns. If the broker connection drops, nothing uncommitted was acked: the broker redelivers
it, and the idempotent upsert makes the redelivery harmless.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from matchops_worker.backoff import Backoff
from matchops_worker.broker import connection_parameters
from matchops_worker.config import WorkerConfig
from matchops_worker.contract import MatchReport, Reason, Rejection, parse_message
from matchops_worker.deadletter import (
    ATTEMPTS_HEADER,
    ERROR_HEADER,
    EXCHANGE_HEADER,
    REASON_HEADER,
    REDELIVERED_HEADER,
    ROUTING_KEY_HEADER,
    USER_ID_HEADER,
    DeadLetterChannel,
    copy_properties,
)
from matchops_worker.metrics import Health, Metrics
from matchops_worker.store import (
    Result,
    RowDeferred,
    RowRejected,
    SchemaOutdated,
    Store,
    StoreUnavailable,
)
from matchops_worker.topology import TopologyConflict, declare

log = logging.getLogger(__name__)

MAX_ERROR_TEXT: Final = 1000
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
# More retries than any pipeline has delays for; a message claiming more is past them all.
# Bounded, `attempts + 1` on a republished copy stays an integer pika can write.
MAX_ATTEMPTS: Final = 1_000_000
# How long the loop waits for broker events when it has nothing due sooner; bounds how late a
# stop request is noticed.
IDLE_POLL: Final = 0.25


class ConsumerCancelled(RuntimeError):  # noqa: N818 - names the event, like pika's own
    """The broker ended our subscription (the queue was deleted, or its node failed)."""


@dataclass(slots=True)
class Delivery:
    """One received message and what validation made of it."""

    tag: int
    exchange: str
    routing_key: str
    properties: pika.BasicProperties
    body: bytes
    parsed: MatchReport | Rejection
    attempts: int
    # The broker delivered it before, to a consumer that did not acknowledge it.
    redelivered: bool = False


def attempts_of(headers: dict[str, Any] | None) -> int:
    """Retries a message has been through, from its `x-matchops-attempts` header."""
    if not headers:
        return 0
    value = headers.get(ATTEMPTS_HEADER, 0)
    if isinstance(value, bool):
        return 0
    try:
        return min(MAX_ATTEMPTS, max(0, int(value)))
    except (TypeError, ValueError):
        return 0


def republished_headers(
    delivery: Delivery,
    attempts: int,
    reason: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The original headers plus the worker's: attempts, origin, and a reason when dead."""
    headers = {key: _encodable(value) for key, value in (delivery.properties.headers or {}).items()}
    headers[ATTEMPTS_HEADER] = attempts
    # A message back from a retry queue arrives with the queue's name as routing key; the
    # header keeps where it was first published.
    headers.setdefault(ROUTING_KEY_HEADER, delivery.routing_key)
    headers.setdefault(EXCHANGE_HEADER, delivery.exchange)
    # RabbitMQ refuses a user_id property other than the publishing login, so the copy cannot
    # carry the producer's; the header keeps it.
    if delivery.properties.user_id:
        headers.setdefault(USER_ID_HEADER, delivery.properties.user_id)
    # A dead letter made from a redelivery says so: the worker that had the message before
    # may have copied it too, and lost its broker session before the ack. Only the verdict
    # on this delivery counts, so an earlier copy's mark goes.
    headers.pop(REDELIVERED_HEADER, None)
    if reason is not None:
        headers[REASON_HEADER] = reason
        headers[ERROR_HEADER] = (error or "")[:MAX_ERROR_TEXT]
        if delivery.redelivered:
            headers[REDELIVERED_HEADER] = True
    return headers


def _encodable(value: Any) -> Any:
    """A received header value as pika can write it again.

    pika reads a floating-point header as an integer (it cannot write floats) and cannot write
    an integer beyond 64 bits, such as 1e20 read that way; the copy carries those as text
    rather than fail, which would stop the worker at every redelivery.
    """
    if isinstance(value, dict):
        return {key: _encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and not INT64_MIN <= value <= INT64_MAX
    ):
        return str(value)
    return value


class Worker:
    """Consumes the pipeline's queue into the store until asked to stop."""

    def __init__(self, config: WorkerConfig, store: Store, metrics: Metrics, health: Health):
        self.config = config
        self.topology = config.topology
        self.store = store
        self.metrics = metrics
        self.health = health
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._pending: list[Delivery] = []
        self._rejected: list[Delivery] = []
        # Invalid messages whose dead-letter copies are on their way, oldest first.
        self._outgoing: deque[tuple[Delivery, Future[None]]] = deque()
        # Invalid messages whose copies are confirmed, left for the next batch's multiple-ack.
        self._confirmed: list[int] = []
        # Stored batches' messages not yet acked: a copy of an invalid message before them
        # was still on its way when their batch committed.
        self._held: list[int] = []
        self._dead_letters: DeadLetterChannel | None = None
        self._batch_deadline = 0.0
        self._last_delivery = 0.0
        self._in_flight: Future[list[Result]] | None = None
        self._flushing: list[Delivery] = []
        self._flush_started = 0.0
        self._probe: Future[int] | None = None
        self._probe_due = 0.0
        self._database_backoff = Backoff()

    def request_stop(self) -> None:
        """Ask the worker to finish the batch in hand and return (safe in a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        """Consume until stopped, reconnecting to the broker with backoff when it goes away."""
        backoff = Backoff()
        try:
            if not self.wait_for_database():
                return
            while not self._stopping:
                try:
                    self._consume()
                    backoff.reset()
                except (
                    pika.exceptions.AMQPError,
                    OSError,
                    TopologyConflict,
                    ConsumerCancelled,
                ) as exc:
                    self._on_session_lost(exc)
                    self._sleep(backoff.next())
        finally:
            self._executor.shutdown(wait=True)
            self.store.close()

    # --- one broker connection ------------------------------------------------------------

    def _consume(self) -> None:
        connection = BlockingConnection(connection_parameters(self.config.amqp_url))
        self.metrics.broker_connections.inc()
        try:
            if self.config.declare_topology:
                channel = connection.channel()
                declare(channel, self.topology)
                channel.close()
            consume = connection.channel()
            consume.basic_qos(prefetch_count=self.config.prefetch)
            publish = connection.channel()
            publish.confirm_delivery()
            self._dead_letters = DeadLetterChannel(connection)
            consumer_tag = consume.basic_consume(self.topology.queue, self._on_message)
            self._set_consuming(True)
            log.info(
                "consuming",
                extra={"queue": self.topology.queue, "prefetch": self.config.prefetch},
            )
            self._loop(connection, consume, publish, consumer_tag)
        finally:
            self._set_consuming(False)
            self._abandon_session()
            if connection.is_open:
                try:
                    connection.close()
                except pika.exceptions.AMQPError:
                    log.debug("broker connection did not close cleanly", exc_info=True)

    def _loop(
        self,
        connection: BlockingConnection,
        consume: BlockingChannel,
        publish: BlockingChannel,
        consumer_tag: str,
    ) -> None:
        wake = _Waker(connection)
        cancelled = False
        broker_cancelled: list[pika.frame.Method[Any]] = []
        consume.add_on_cancel_callback(broker_cancelled.append)
        while True:
            connection.process_data_events(time_limit=self._poll_timeout())
            self.health.tick()
            self._dead_letter_rejections()
            self._settle_dead_letters(consume)
            if self._in_flight is not None and self._in_flight.done():
                self._settle(consume, publish)
            self._check_database(wake)
            if self._stopping and not cancelled:
                # Messages received but not yet handed to us are returned to the queue by pika.
                consume.basic_cancel(consumer_tag)
                cancelled = True
                log.info("stopping: consumer cancelled, finishing the batch in hand")
            if broker_cancelled and not cancelled:
                cancelled = True
                log.warning(
                    "the broker cancelled the consumer (queue deleted?): finishing the batch "
                    "in hand, then reconnecting",
                    extra={"queue": self.topology.queue},
                )
            if self._in_flight is None and self._batch_due():
                self._flush(wake)
            if (
                cancelled
                and self._in_flight is None
                and not self._outgoing
                and self._probe is None
                and (not self._pending or not self.health.database)
            ):
                self._ack_remaining(consume)
                if broker_cancelled and not self._stopping:
                    raise ConsumerCancelled(
                        f"the broker cancelled the consumer of {self.topology.queue!r}"
                    )
                return

    def _on_message(
        self,
        channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        parsed = parse_message(
            body,
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=properties.headers,
            timestamp=properties.timestamp,
        )
        delivery = Delivery(
            tag=method.delivery_tag,
            exchange=method.exchange,
            routing_key=method.routing_key,
            properties=properties,
            body=body,
            parsed=parsed,
            attempts=attempts_of(properties.headers),
            redelivered=bool(method.redelivered),
        )
        now = self._last_delivery = time.monotonic()
        if isinstance(parsed, Rejection):
            self._rejected.append(delivery)
            return
        if not self._pending:
            self._batch_deadline = now + self.config.batch_wait
        self._pending.append(delivery)

    def _poll_timeout(self) -> float:
        if self._in_flight is not None or self._probe is not None:
            return IDLE_POLL  # the store thread wakes the loop when it is done
        if self._pending and self.health.database:
            due = min(self._batch_deadline, self._last_delivery + self.config.batch_idle)
            return max(0.0, min(IDLE_POLL, due - time.monotonic()))
        return IDLE_POLL

    def _batch_due(self) -> bool:
        if not self._pending or not self.health.database:
            return False
        # Invalid messages not yet acked hold places in the prefetch window as well: counted
        # in, a batch is due once its half of the window is used up, rather than waiting for
        # the broker's next delivery while the store has nothing to do.
        invalid = len(self._outgoing) + len(self._confirmed)
        now = time.monotonic()
        return (
            len(self._pending) + invalid >= self.config.batch_limit
            or now >= self._batch_deadline
            or self._stopping
            # A pause in deliveries: the broker sends at once whatever the queue holds and
            # the window allows, and a window too full to allow more holds a full batch
            # already. So the queue has run dry, and waiting longer only delays the batch.
            or now - self._last_delivery >= self.config.batch_idle
        )

    # --- invalid messages -----------------------------------------------------------------

    def _dead_letter_rejections(self) -> None:
        if not self._rejected:
            return
        rejected, self._rejected = self._rejected, []
        dead_letters = self._dead_letters
        assert dead_letters is not None  # opened with the session
        for delivery in rejected:
            assert isinstance(delivery.parsed, Rejection)
            reason, error = delivery.parsed.reason, delivery.parsed.error
            headers = self._dead_letter_headers(delivery, reason, error)
            future = dead_letters.publish(
                self.topology.dead_letter_queue,
                delivery.body,
                copy_properties(delivery.properties, headers),
            )
            self._outgoing.append((delivery, future))

    def _settle_dead_letters(self, consume: BlockingChannel) -> None:
        """Settle the invalid messages whose copies are confirmed, oldest first.

        Each is acked by the multiple-ack of the batch that holds later messages, when there
        is one: in a quorum queue every ack is an entry in the queue's log, so acking it alone
        costs the broker about as much as the copy itself. A stored batch held back by these
        copies is acked as soon as they are confirmed.
        """
        confirmed = False
        while self._outgoing and self._outgoing[0][1].done():
            delivery, future = self._outgoing.popleft()
            future.result()  # a failed copy ends the session: the message is redelivered
            self._confirmed.append(delivery.tag)
            confirmed = True
            assert isinstance(delivery.parsed, Rejection)
            self.metrics.dead_letters.labels(delivery.parsed.reason).inc()
            self.metrics.messages.labels("dead_lettered").inc()
        if confirmed and (self._held or self._latest_valid_tag() < self._confirmed[-1]):
            self._ack_settled(consume)

    def _latest_valid_tag(self) -> int:
        """The delivery tag of the newest valid message not yet acked (0: none)."""
        newest = self._pending or self._flushing
        return newest[-1].tag if newest else 0

    def _ack_settled(self, consume: BlockingChannel) -> None:
        """Ack, in one multiple-ack, every settled message before the first unsettled one.

        Settled: stored (or sent to a retry queue), or invalid with its copy confirmed.
        Unsettled: pending, being written, or invalid with its copy still on its way. A
        multiple-ack covers every unacked message up to its tag, so it stops before the first
        unsettled message; settled ones after it wait for the next ack.
        """
        boundary = self._first_unsettled_tag()
        ready = [tag for tag in (*self._confirmed, *self._held) if tag < boundary]
        if not ready:
            return
        consume.basic_ack(max(ready), multiple=True)
        self._confirmed = [tag for tag in self._confirmed if tag > boundary]
        self._held = [tag for tag in self._held if tag > boundary]

    def _first_unsettled_tag(self) -> float:
        firsts = [
            queue[0].tag for queue in (self._rejected, self._pending, self._flushing) if queue
        ]
        if self._outgoing:
            firsts.append(self._outgoing[0][0].tag)
        return min(firsts, default=math.inf)

    def _ack_remaining(self, consume: BlockingChannel) -> None:
        """On leaving: ack what is settled; one by one what lies past held valid messages."""
        self._ack_settled(consume)
        for tag in sorted([*self._confirmed, *self._held]):
            consume.basic_ack(tag)
        self._confirmed.clear()
        self._held.clear()

    def _dead_letter(
        self, publish: BlockingChannel, delivery: Delivery, reason: str, error: str
    ) -> None:
        headers = self._dead_letter_headers(delivery, reason, error)
        self._publish(publish, self.topology.dead_letter_queue, delivery, headers)
        self.metrics.dead_letters.labels(reason).inc()

    def _dead_letter_headers(self, delivery: Delivery, reason: str, error: str) -> dict[str, Any]:
        log.warning(
            "dead-lettered message",
            extra={
                "reason": reason,
                "error": error[:MAX_ERROR_TEXT],
                "dead_letter_queue": self.topology.dead_letter_queue,
                "attempts": delivery.attempts,
            },
        )
        return republished_headers(delivery, delivery.attempts, reason, error)

    def _publish(
        self,
        publish: BlockingChannel,
        queue: str,
        delivery: Delivery,
        headers: dict[str, Any],
    ) -> None:
        """Copy a message to a queue, persistent, and wait for the broker's confirm."""
        properties = copy_properties(delivery.properties, headers)
        publish.basic_publish("", queue, delivery.body, properties, mandatory=True)

    # --- batches --------------------------------------------------------------------------

    def _flush(self, wake: _Waker) -> None:
        limit = self.config.batch_limit
        self._flushing, self._pending = self._pending[:limit], self._pending[limit:]
        reports = [d.parsed for d in self._flushing if isinstance(d.parsed, MatchReport)]
        self._flush_started = time.monotonic()
        self._in_flight = self._executor.submit(self.store.write, self.store.prepare(reports))
        self._in_flight.add_done_callback(wake)
        self.metrics.batch_size.observe(len(reports))

    def _settle(self, consume: BlockingChannel, publish: BlockingChannel) -> None:
        future, self._in_flight = self._in_flight, None
        batch, self._flushing = self._flushing, []
        assert future is not None
        try:
            results = future.result()
        except StoreUnavailable as exc:
            self.metrics.database_errors.inc()
            self._database_lost(str(exc))
            self._retry(publish, batch, str(exc))
        else:
            self.metrics.batch_seconds.observe(time.monotonic() - self._flush_started)
            self.metrics.last_commit.set_to_current_time()
            deferred: list[Delivery] = []
            clash = ""
            outcomes: Counter[str] = Counter()
            for delivery, result in zip(batch, results, strict=True):
                if isinstance(result, RowRejected):
                    self._dead_letter(publish, delivery, Reason.STORE_REJECTED, result.error)
                    outcomes["dead_lettered"] += 1
                elif isinstance(result, RowDeferred):
                    deferred.append(delivery)
                    clash = result.error
                else:
                    outcomes[result.value] += 1
            for name, count in outcomes.items():
                self.metrics.messages.labels(name).inc(count)
            if deferred:
                self._retry(publish, deferred, clash)
            log.debug("batch stored", extra={"messages": len(batch)})
        if batch:
            self._ack_batch(consume, batch)

    def _ack_batch(self, consume: BlockingChannel, batch: list[Delivery]) -> None:
        self._held.extend(delivery.tag for delivery in batch)
        self._settle_dead_letters(consume)
        # With an earlier invalid message's copy still on its way, the messages after it wait
        # for its confirm: one multiple-ack then, rather than an ack for each now.
        self._ack_settled(consume)
        if self._held:
            log.debug(
                "batch stored; its ack waits for a dead-letter copy's confirm",
                extra={"messages": len(self._held)},
            )

    def _retry(self, publish: BlockingChannel, batch: list[Delivery], error: str) -> None:
        """Send messages the database could not take now through the retry queues."""
        for delivery in batch:
            attempts = delivery.attempts + 1
            queue = self.topology.retry_queue_for(attempts)
            if queue is None:
                self._dead_letter(
                    publish,
                    delivery,
                    Reason.RETRIES_EXHAUSTED,
                    f"gave up after {delivery.attempts} retries: {error}",
                )
                self.metrics.messages.labels("dead_lettered").inc()
                continue
            self._publish(publish, queue, delivery, republished_headers(delivery, attempts))
            self.metrics.retries.labels(queue).inc()
            self.metrics.messages.labels("retried").inc()
        log.warning(
            "messages sent to retry",
            extra={
                "messages": len(batch),
                "error": error,
                "retry_delays": list(self.topology.retry_delays),
            },
        )

    # --- database availability ------------------------------------------------------------

    def _database_lost(self, error: str) -> None:
        if self.health.database:
            log.error("database unavailable, holding further batches", extra={"error": error})
        self._set_database(False)
        self._probe_due = time.monotonic() + self._database_backoff.next()

    def _check_database(self, wake: _Waker) -> None:
        """While the database is away, probe it with backoff; resume when it answers."""
        if self._probe is not None and self._probe.done():
            probe, self._probe = self._probe, None
            try:
                probe.result()
            except (StoreUnavailable, SchemaOutdated) as exc:
                self._database_lost(str(exc))
            else:
                log.info("database available")
                self._database_backoff.reset()
                self._set_database(True)
        if (
            not self.health.database
            and not self._stopping
            and self._probe is None
            and self._in_flight is None
            and time.monotonic() >= self._probe_due
        ):
            self._probe = self._executor.submit(self.store.check_schema)
            self._probe.add_done_callback(wake)

    def wait_for_database(self) -> bool:
        """Block until the schema check passes (True) or a stop is requested (False)."""
        backoff = Backoff()
        while not self._stopping:
            self.health.tick()
            try:
                version = self.store.check_schema()
            except (StoreUnavailable, SchemaOutdated) as exc:
                delay = backoff.next()
                log.error("database not ready", extra={"error": str(exc), "retry_in": delay})
                self._sleep(delay)
                continue
            log.info("database ready", extra={"schema_version": version})
            self._set_database(True)
            return True
        return False

    # --- bookkeeping ----------------------------------------------------------------------

    def _abandon_session(self) -> None:
        """After a connection loss: unacked messages go back to the queue; wait for the store."""
        for future in (self._in_flight, self._probe):
            if future is not None:
                try:
                    future.result()
                except (StoreUnavailable, SchemaOutdated):
                    self._set_database(False)
        if self._dead_letters is not None:
            # Unacked, the messages whose copies were on their way come back and are
            # dead-lettered again.
            self._dead_letters.abandon("the broker connection closed")
            self._dead_letters = None
        self._outgoing.clear()
        self._confirmed = []
        self._held = []
        self._in_flight = None
        self._probe = None
        self._pending = []
        self._rejected = []
        self._flushing = []

    def _on_session_lost(self, exc: BaseException) -> None:
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 404:
            message = (
                f"queue {self.topology.queue!r} or a retry / dead-letter queue does not exist: "
                "the operator declares them, or set MATCHOPS_DECLARE_TOPOLOGY=true"
            )
        elif isinstance(exc, pika.exceptions.UnroutableError):
            message = (
                "a retry or dead-letter queue does not exist; declare the topology again "
                "(MATCHOPS_DECLARE_TOPOLOGY=true) or let the operator repair it"
            )
        else:
            message = f"{type(exc).__name__}: {exc}"
        log.error("broker session ended, reconnecting", extra={"error": message})

    def _set_consuming(self, value: bool) -> None:
        self.health.consuming = value
        self.metrics.broker_connected.set(1 if value else 0)

    def _set_database(self, value: bool) -> None:
        self.health.database = value
        self.metrics.database_available.set(1 if value else 0)

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            self.health.tick()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


class _Waker:
    """Wakes the consume loop from the store thread when a write or probe finishes."""

    def __init__(self, connection: BlockingConnection) -> None:
        self.connection = connection

    def __call__(self, _: Future[Any]) -> None:
        # A connection already gone is noticed by the loop itself.
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            self.connection.add_callback_threadsafe(_nothing)


def _nothing() -> None:
    return None
