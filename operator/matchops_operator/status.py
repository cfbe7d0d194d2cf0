"""The figures in a MatchIngestion's status, and the autoscaler's memory kept there.

Everything here is pure: it turns observations into the `status` blocks the operator writes and
reads the scaling history back out of them, so a restarted operator goes on where it stopped.
A block whose figures did not change keeps its timestamps, so an idle pipeline's status is not
rewritten on every poll.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lightkube.resources.batch_v1 import CronJob
from matchops_worker.topology import Topology

from matchops_operator.scaling import History, Observation

# The status blocks the operator writes; anything else in status is left alone.
OWNED = frozenset({"observedGeneration", "conditions", "backlog", "workers", "scraper", "topology"})


def rfc3339(timestamp: float) -> str:
    """A Kubernetes timestamp (seconds precision, UTC)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> float | None:
    """Seconds since the epoch from a status timestamp; None when absent or unreadable."""
    if isinstance(value, datetime):
        return value.timestamp()
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def backlog_status(
    observation: Observation, dead_lettered: int | None, previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """`status.backlog`; observedAt stays put while the figures do not change."""
    figures: dict[str, Any] = {
        "total": observation.backlog,
        "ready": observation.ready,
        "consumers": observation.consumers,
    }
    if observation.unacked is not None:
        figures["unacked"] = observation.unacked
    if dead_lettered is not None:
        figures["deadLettered"] = dead_lettered
    if observation.publish_rate is not None:
        figures["publishRate"] = round(observation.publish_rate, 1)
    if observation.ack_rate is not None:
        figures["ackRate"] = round(observation.ack_rate, 1)
    if previous and previous.get("observedAt"):
        unchanged = {k: v for k, v in previous.items() if k != "observedAt"} == figures
        if unchanged:
            return {**figures, "observedAt": previous["observedAt"]}
    return {**figures, "observedAt": rfc3339(observation.at)}


def observation_from_status(backlog: Mapping[str, Any] | None) -> Observation | None:
    """The last poll's observation, as `status.backlog` recorded it."""
    if not backlog:
        return None
    at = parse_time(backlog.get("observedAt"))
    if at is None:
        return None
    return Observation(
        at=at,
        ready=int(backlog.get("ready", 0)),
        consumers=int(backlog.get("consumers", 0)),
        unacked=_optional_int(backlog.get("unacked")),
        publish_rate=_optional_float(backlog.get("publishRate")),
        ack_rate=_optional_float(backlog.get("ackRate")),
    )


def history_from_status(status: Mapping[str, Any], replicas: int) -> History:
    """The autoscaler's memory as status recorded it; `replicas` when status has none."""
    workers = status.get("workers") or {}
    desired = workers.get("desiredReplicas")
    return History(
        replicas=int(desired) if desired is not None else replicas,
        throughput_per_replica=_optional_float(workers.get("throughputPerReplica")),
        over_provisioned_since=parse_time(workers.get("overProvisionedSince")),
        previous=observation_from_status(status.get("backlog")),
    )


def workers_status(
    history: History,
    ready_replicas: int,
    previous: Mapping[str, Any] | None,
    scaled: tuple[float, str] | None = None,
) -> dict[str, Any]:
    """`status.workers`: replicas, the last scaling decision and the autoscaler's memory."""
    block: dict[str, Any] = {
        "desiredReplicas": history.replicas,
        "readyReplicas": ready_replicas,
        "summary": f"{ready_replicas}/{history.replicas}",
    }
    if scaled is not None:
        block["lastScaleTime"] = rfc3339(scaled[0])
        block["lastScaleReason"] = scaled[1]
    elif previous:
        for key in ("lastScaleTime", "lastScaleReason"):
            if key in previous:
                block[key] = previous[key]
    if history.throughput_per_replica is not None:
        block["throughputPerReplica"] = round(history.throughput_per_replica, 1)
    if history.over_provisioned_since is not None:
        block["overProvisionedSince"] = rfc3339(history.over_provisioned_since)
    return block


def scraper_status(cronjob: CronJob) -> dict[str, Any]:
    """`status.scraper` from the CronJob's own status."""
    status = cronjob.status
    block: dict[str, Any] = {"active": len(status.active or []) if status else 0}
    if status is not None:
        if status.lastScheduleTime is not None:
            block["lastScheduleTime"] = _timestamp(status.lastScheduleTime)
        if status.lastSuccessfulTime is not None:
            block["lastSuccessfulTime"] = _timestamp(status.lastSuccessfulTime)
    return block


def topology_status(topology: Topology, policy: str | None) -> dict[str, Any]:
    """`status.topology`: the broker objects declared for the pipeline."""
    block: dict[str, Any] = {
        "exchange": topology.exchange,
        "queue": topology.queue,
        "queueType": topology.queue_type,
        "routingKeys": list(topology.routing_keys),
        "retryQueues": list(topology.retry_queues),
        "deadLetterQueue": topology.dead_letter_queue,
    }
    if policy:
        block["policy"] = policy
    return block


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning the operator's blocks of `old` into `new`; empty if equal."""
    return merge_patch({k: v for k, v in old.items() if k in OWNED}, new)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386: changed keys with their new value, removed keys as None, objects recursively."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif before != value or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _optional_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
