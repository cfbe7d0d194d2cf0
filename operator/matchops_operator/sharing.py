"""Whether other MatchIngestions use a pipeline's queues, so that deleting it keeps them.

Two MatchIngestions name the same queue when a pipeline is split across resources or copied
under another name. `deletionPolicy: Delete` then deletes the queues only with the last of
them: the others' messages are never deleted with a resource that merely shared them. Two
resources share a broker when they read the same Secret key, or when their URLs name the same
host, port and virtual host (credentials aside).

The queue defaults to the resource's name, so the same pipeline applied in two namespaces
(staging and production, say) names the same queues: resources of other namespaces count as
well, wherever the operator may list them (`search_scope`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from matchops_operator.config import is_pattern

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


@dataclass(frozen=True)
class Endpoint:
    """A broker's virtual host, as a URL names it."""

    host: str
    port: int
    vhost: str


@dataclass(frozen=True)
class Neighbour:
    """Another MatchIngestion: its queues and where they live.

    `name` is as users are told it: `namespace/name` for a resource of another namespace.
    """

    name: str
    queues: frozenset[str]
    # Whether it reads the broker URL from the same Secret key (the same broker, whatever the
    # URL says); `endpoint` is its URL's broker otherwise, None when it cannot be read.
    same_secret: bool
    endpoint: Endpoint | None = None


def endpoint_of(amqp_url: str) -> Endpoint | None:
    """The broker and virtual host an AMQP URL names; None when it is not such a URL."""
    try:
        parts = urlsplit(amqp_url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    # As pika reads it: no path, or a bare slash, is the default virtual host "/".
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return Endpoint(parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme], vhost)


def search_scope(served: Sequence[str], own: str) -> tuple[str, ...] | None:
    """The namespaces to look in for other users of a pipeline's queues; None for all of them.

    An operator that serves every namespace, or namespaces by pattern, may list MatchIngestions
    in all of them; one that serves listed namespaces may list them in those only (its own
    first).
    """
    if not served or any(is_pattern(namespace) for namespace in served):
        return None
    return (own, *sorted(set(served) - {own}))


def display_name(namespace: str, name: str, own: str) -> str:
    """A resource's name as a pipeline of namespace `own` names it in its Events."""
    return name if namespace == own else f"{namespace}/{name}"


def sharers(
    queues: Iterable[str], endpoint: Endpoint | None, others: Iterable[Neighbour]
) -> list[str]:
    """The names of the other MatchIngestions that use any of `queues` on the same broker."""
    mine = set(queues)
    return sorted(
        other.name
        for other in others
        if mine & other.queues
        and (other.same_secret or (endpoint is not None and other.endpoint == endpoint))
    )
