"""The only module that talks to RabbitMQ: AMQP (pika) and, when configured, the management API.

Every function here is blocking and short-lived (one connection per call); the reconciler runs
them in a worker thread. Failures come out as `Problem`s worded for the user; a queue that
exists with other arguments, or a declaration the user has no permission for, is reported with
RabbitMQ's own text and does not stop the backlog from being read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import pika
import pika.exceptions
from matchops_worker.topology import (
    Binding,
    Policy,
    Topology,
    TopologyConflict,
    TopologyRefused,
    declare,
    unbind,
)

from matchops_operator.problems import Problem, retrying, stalled
from matchops_operator.scaling import Observation

CONNECTION_NAME = "matchops-operator"
TIMEOUT_SECONDS = 10.0
_REFUSED = 403  # ACCESS_REFUSED: bad credentials, or (on a channel) a missing permission
_NOT_ALLOWED = 530  # NOT_ALLOWED: no access to the virtual host
_IN_USE = 406  # PRECONDITION_FAILED: an exchange deleted if unused still has bindings


@dataclass(frozen=True)
class BrokerAccess:
    """Where the broker is, and where its URLs came from (for messages)."""

    amqp_url: str
    source: str
    management_url: str | None = None
    management_source: str | None = None


@dataclass(frozen=True)
class BrokerReport:
    """The outcome of one sync: the queue's figures, and what kept the topology from converging."""

    observation: Observation | None
    dead_lettered: int | None
    policy: str | None
    problem: Problem | None
    # Every object and binding declared, and the stale bindings removed.
    declared: bool


@dataclass(frozen=True)
class QueueStats:
    """What the management API adds to an AMQP passive declare."""

    unacked: int
    publish_rate: float
    ack_rate: float


def sync(access: BrokerAccess, topology: Topology, stale: Sequence[Binding] = ()) -> BrokerReport:
    """Declare the topology (repairing anything deleted by hand), then remove the `stale`
    bindings; apply policies, read the queue."""
    parameters = _parameters(access)
    problem: Problem | None = None
    declared = False
    with _connection(parameters, access) as connection:
        channel = connection.channel()
        try:
            declare(channel, topology)
            unbind(channel, stale)
        except TopologyConflict as conflict:
            problem = stalled(
                "QueueConflict",
                f"{conflict.kind} {conflict.name} already exists with other settings "
                f"({conflict.reason}); change spec.broker to match it, or move its messages "
                "and delete it",
            )
        except TopologyRefused as refused:
            problem = _refused(parameters, refused.action, refused)
        else:
            declared = True
            channel.close()
        ready, consumers = _ready_backlog(connection, topology.queue)
        dead_lettered, _ = _ready_backlog(connection, topology.dead_letter_queue)
    observed_at = time.time()

    policy: str | None = None
    stats: QueueStats | None = None
    if access.management_url is not None:
        try:
            with _management(access.management_url, access.management_source) as api:
                vhost = parameters.virtual_host
                for item in topology.policies:
                    _ensure_policy(api, vhost, item)
                policy = ", ".join(item.name for item in topology.policies)
                stats = _queue_stats(api, vhost, topology.queue)
        except Problem as failure:
            problem = problem or failure

    observation = None
    if ready is not None:
        observation = Observation(
            at=observed_at,
            ready=ready,
            consumers=consumers or 0,
            unacked=stats.unacked if stats else None,
            publish_rate=stats.publish_rate if stats else None,
            ack_rate=stats.ack_rate if stats else None,
        )
    return BrokerReport(observation, dead_lettered, policy, problem, declared)


def delete_topology(access: BrokerAccess, topology: Topology) -> None:
    """Delete the pipeline's queues with their messages, its policies and the exchange if unused."""
    parameters = _parameters(access)
    with _connection(parameters, access) as connection:
        channel = connection.channel()
        for queue in topology.queues:
            action = f"delete queue {queue.name}"
            try:
                channel.queue_delete(queue=queue.name)
            except pika.exceptions.ChannelClosedByBroker as exc:
                raise _refused(parameters, action, exc) from exc
        try:
            channel.exchange_delete(exchange=topology.exchange, if_unused=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            # An exchange still bound to other queues stays for their producers.
            if exc.reply_code != _IN_USE:
                raise _refused(parameters, f"delete exchange {topology.exchange}", exc) from exc
    if access.management_url is not None:
        with _management(access.management_url, access.management_source) as api:
            for item in topology.policies:
                response = _request(api, "DELETE", _policy_path(parameters.virtual_host, item.name))
                if response.status_code not in (204, 404):
                    raise _rejected(response, f"deleting policy {item.name}")


def _parameters(access: BrokerAccess) -> pika.URLParameters:
    scheme = urlsplit(access.amqp_url).scheme
    if scheme not in ("amqp", "amqps"):
        # The value holds credentials: never repeat it.
        raise stalled(
            "InvalidBrokerURL",
            f"{access.source} does not hold an AMQP URL; expected "
            "amqp[s]://user:password@host:port/vhost",
        )
    try:
        parameters = pika.URLParameters(access.amqp_url)
    except ValueError as exc:
        raise stalled("InvalidBrokerURL", f"{access.source} holds an invalid URL: {exc}") from exc
    parameters.connection_attempts = 1
    parameters.retry_delay = 0
    parameters.socket_timeout = TIMEOUT_SECONDS
    parameters.stack_timeout = TIMEOUT_SECONDS
    parameters.blocked_connection_timeout = TIMEOUT_SECONDS
    parameters.client_properties = {"connection_name": CONNECTION_NAME}
    return parameters


@contextmanager
def _connection(
    parameters: pika.URLParameters, access: BrokerAccess
) -> Iterator[pika.BlockingConnection]:
    where = f"RabbitMQ at {parameters.host}:{parameters.port} (vhost {parameters.virtual_host})"
    try:
        connection = pika.BlockingConnection(parameters)
    except pika.exceptions.AMQPError as exc:
        raise _not_connected(exc, where, access.source) from exc
    try:
        yield connection
    except pika.exceptions.AMQPConnectionError as exc:
        raise retrying("BrokerUnreachable", f"lost the connection to {where}: {exc}") from exc
    finally:
        if connection.is_open:
            connection.close()


def _not_connected(exc: pika.exceptions.AMQPError, where: str, source: str) -> Problem:
    """Why a connection failed: credentials refused, no access to the vhost, or unreachable.

    pika reports a refusal during the handshake as its own exception, or after it as the
    broker closing the connection with a reply code; both come out the same.
    """
    closed = isinstance(exc, pika.exceptions.ConnectionClosedByBroker)
    code = exc.reply_code if closed else None
    cause = exc.reply_text if closed else _cause(exc)
    authentication = (
        pika.exceptions.ProbableAuthenticationError,
        pika.exceptions.AuthenticationError,
    )
    if isinstance(exc, authentication) or code == _REFUSED:
        return stalled(
            "BrokerAuthenticationFailed", f"{where} refused the credentials in {source}: {cause}"
        )
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError) or code == _NOT_ALLOWED:
        return stalled(
            "BrokerAccessDenied",
            f"{where} denied the user in {source} access to the vhost: {cause}",
        )
    if closed:
        return retrying("BrokerUnreachable", f"{where} closed the connection: {exc}")
    return retrying("BrokerUnreachable", f"cannot connect to {where}: {cause}")


def _refused(
    parameters: pika.URLParameters, action: str, exc: pika.exceptions.ChannelClosedByBroker
) -> Problem:
    """The broker's refusal of an operation on the topology, as a Problem naming it."""
    user = parameters.credentials.username
    vhost = parameters.virtual_host
    if exc.reply_code == _REFUSED:
        return stalled(
            "BrokerPermissionDenied",
            f"RabbitMQ user {user} may not {action} in vhost {vhost} ({exc.reply_text}); "
            "grant it configure, write and read permissions on the pipeline's exchange and "
            f"queues, e.g. rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*'",
        )
    return retrying(
        "BrokerOperationFailed",
        f"RabbitMQ refused to {action} in vhost {vhost}: {exc.reply_code} {exc.reply_text}",
    )


def _ready_backlog(
    connection: pika.BlockingConnection, queue: str
) -> tuple[int | None, int | None]:
    """The ready part of a queue's backlog (what AMQP tells; the unacknowledged part needs the
    management API), and its consumers; (None, None) if the queue does not exist."""
    channel = connection.channel()
    try:
        frame = channel.queue_declare(queue=queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        # 404: not declared, because an earlier conflict stopped the declaration.
        return None, None
    channel.close()
    return int(frame.method.message_count), int(frame.method.consumer_count)


@contextmanager
def _management(url: str, source: str | None) -> Iterator[httpx.Client]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise stalled(
            "InvalidManagementURL",
            f"{source} does not hold a management API URL; expected "
            "http[s]://user:password@host:port",
        )
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    auth = (unquote(parts.username or ""), unquote(parts.password or ""))
    with httpx.Client(base_url=base, auth=auth, timeout=TIMEOUT_SECONDS) as client:
        yield client


def _request(
    api: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    try:
        response = api.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise retrying(
            "ManagementAPIUnreachable",
            f"cannot reach the RabbitMQ management API at {api.base_url}: {exc}",
        ) from exc
    if response.status_code == 401:
        raise stalled(
            "ManagementAuthenticationFailed",
            f"the RabbitMQ management API at {api.base_url} refused the credentials",
        )
    return response


def _rejected(response: httpx.Response, what: str) -> Problem:
    return stalled(
        "ManagementAPIRejected",
        f"the RabbitMQ management API refused {what}: HTTP {response.status_code} "
        f"{response.text[:300]}",
    )


def _policy_path(vhost: str, name: str) -> str:
    return f"/api/policies/{quote(vhost, safe='')}/{quote(name, safe='')}"


def _ensure_policy(api: httpx.Client, vhost: str, policy: Policy) -> None:
    """PUT the policy unless the broker already holds exactly it (no write when unchanged)."""
    path = _policy_path(vhost, policy.name)
    wanted = policy.body()
    current = _request(api, "GET", path)
    if current.status_code == 200:
        held = current.json()
        if {key: held.get(key) for key in wanted} == wanted:
            return
    elif current.status_code != 404:
        raise _rejected(current, f"reading policy {policy.name}")
    response = _request(api, "PUT", path, wanted)
    if response.status_code not in (201, 204):
        raise _rejected(response, f"policy {policy.name}")


def _queue_stats(api: httpx.Client, vhost: str, queue: str) -> QueueStats | None:
    response = _request(api, "GET", f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise _rejected(response, f"reading queue {queue}")
    body = response.json()
    stats = body.get("message_stats") or {}
    return QueueStats(
        unacked=int(body.get("messages_unacknowledged") or 0),
        publish_rate=float((stats.get("publish_details") or {}).get("rate") or 0.0),
        ack_rate=float((stats.get("ack_details") or {}).get("rate") or 0.0),
    )


def _cause(exc: BaseException) -> str:
    """pika wraps socket errors in tuples of connector errors; name the innermost."""
    text = repr(exc.args[0]) if exc.args else type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"
