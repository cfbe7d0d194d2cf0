"""The broker topology of a MatchIngestion: the worker's Topology value, built from the spec."""

from __future__ import annotations

from matchops_worker.durations import DurationError
from matchops_worker.topology import Topology, TopologyError, build_topology

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
