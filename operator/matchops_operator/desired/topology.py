"""The broker topology of a MatchIngestion: the worker's Topology value, built from the spec,
and the bindings a changed spec leaves behind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from matchops_worker.durations import DurationError
from matchops_worker.topology import Binding, Topology, TopologyError, build_topology

from matchops_operator.spec import BrokerSpec, SpecError


def topology_for(name: str, broker: BrokerSpec) -> Topology:
    """Names and arguments of the pipeline's exchange and queues; the queue defaults to `name`."""
    try:
        return build_topology(
            broker.queue or name,
            exchange=broker.exchange,
            routing_keys=broker.routing_keys,
            queue_type=broker.queue_type,
            retry_delays=broker.retry.delays,
            dead_letter_queue=broker.dead_letter_queue,
        )
    except (TopologyError, DurationError) as exc:
        raise SpecError(f"spec.broker: {exc}") from exc


def stale_bindings(topology: Topology, declared: Mapping[str, Any] | None) -> tuple[Binding, ...]:
    """Bindings the operator made (`declared`: status.topology, written once a declaration
    completed) that `topology` no longer has: routing keys dropped from the spec.

    Only between the same exchange and queue: bindings of a renamed queue or exchange stay with
    it, as its messages do. A key only someone else bound was never in `declared`, and the
    queue's binding to the default exchange is not between these two.
    """
    if not declared or (declared.get("exchange"), declared.get("queue")) != (
        topology.exchange,
        topology.queue,
    ):
        return ()
    keys = [key for key in declared.get("routingKeys") or [] if key not in topology.routing_keys]
    return tuple(Binding(topology.exchange, topology.queue, key) for key in keys)
