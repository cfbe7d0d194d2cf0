"""Status figures, the autoscaler's memory kept in status, and minimal status patches."""

from __future__ import annotations

from matchops_operator.scaling import History, Observation
from matchops_operator.status import (
    backlog_status,
    history_from_status,
    merge_patch,
    observation_from_status,
    parse_time,
    rfc3339,
    status_patch,
    topology_status,
    workers_status,
)
from matchops_worker.topology import build_topology

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def test_timestamps_round_trip() -> None:
    assert rfc3339(T0) == "2026-01-01T00:00:00Z"
    assert parse_time("2026-01-01T00:00:00Z") == T0
    assert parse_time("not a time") is None
    assert parse_time(None) is None


def test_backlog_block_keeps_observed_at_while_figures_stand_still() -> None:
    first = backlog_status(Observation(at=T0, ready=5, consumers=1), 2, None)
    assert first == {
        "total": 5,
        "ready": 5,
        "consumers": 1,
        "deadLettered": 2,
        "observedAt": rfc3339(T0),
    }
    same = backlog_status(Observation(at=T0 + 60, ready=5, consumers=1), 2, first)
    assert same == first
    moved = backlog_status(Observation(at=T0 + 70, ready=4, consumers=1), 2, first)
    assert moved["observedAt"] == rfc3339(T0 + 70)


def test_backlog_block_carries_management_figures_rounded() -> None:
    observation = Observation(
        at=T0, ready=10, consumers=2, unacked=400, publish_rate=12.345, ack_rate=460.04
    )
    block = backlog_status(observation, 0, None)
    assert block["total"] == 410  # messages not yet stored: ready and unacked
    assert block["unacked"] == 400
    assert block["publishRate"] == 12.3
    assert block["ackRate"] == 460.0
    assert observation_from_status(block) == Observation(
        at=T0, ready=10, consumers=2, unacked=400, publish_rate=12.3, ack_rate=460.0
    )


def test_history_survives_a_round_trip_through_status() -> None:
    history = History(
        replicas=4,
        throughput_per_replica=461.26,
        over_provisioned_since=T0,
        previous=Observation(at=T0 - 10, ready=100, consumers=4),
    )
    status = {
        "workers": workers_status(history, 3, None, scaled=(T0 - 100, "backlog 1840")),
        "backlog": backlog_status(history.previous, 0, None),  # type: ignore[arg-type]
    }
    assert status["workers"]["summary"] == "3/4"
    restored = history_from_status(status, replicas=1)
    assert restored == History(
        replicas=4,
        throughput_per_replica=461.3,
        over_provisioned_since=T0,
        previous=Observation(at=T0 - 10, ready=100, consumers=4),
    )


def test_history_starts_from_the_given_replicas_without_status() -> None:
    assert history_from_status({}, replicas=2) == History(replicas=2)


def test_workers_block_keeps_the_last_scaling_decision() -> None:
    scaled = workers_status(History(replicas=4), 0, None, scaled=(T0, "backlog 1840"))
    assert scaled["lastScaleTime"] == rfc3339(T0)
    assert scaled["lastScaleReason"] == "backlog 1840"
    kept = workers_status(History(replicas=4), 2, scaled)
    assert kept["lastScaleTime"] == rfc3339(T0)
    assert kept["summary"] == "2/4"
    assert "overProvisionedSince" not in kept


def test_topology_block_names_the_broker_objects() -> None:
    topology = build_topology("matches", routing_keys=["matches", "matches.process"])
    assert topology_status(topology, None) == {
        "exchange": "matches",
        "queue": "matches",
        "queueType": "quorum",
        "routingKeys": ["matches", "matches.process"],
        "retryQueues": ["matches.retry.10s", "matches.retry.1m", "matches.retry.5m"],
        "deadLetterQueue": "matches.dlq",
    }


def test_merge_patch_is_minimal_and_removes_keys() -> None:
    old = {"workers": {"desiredReplicas": 2, "overProvisionedSince": "t"}, "backlog": {"ready": 1}}
    new = {"workers": {"desiredReplicas": 3}, "backlog": {"ready": 1}}
    assert merge_patch(old, new) == {
        "workers": {"desiredReplicas": 3, "overProvisionedSince": None}
    }
    assert merge_patch(new, new) == {}


def test_status_patch_leaves_other_writers_alone() -> None:
    old = {"observedGeneration": 1, "kopf": {"progress": {}}}
    assert status_patch(old, {"observedGeneration": 1}) == {}
    assert status_patch(old, {"observedGeneration": 2}) == {"observedGeneration": 2}


def test_status_patch_replaces_lists_whole() -> None:
    old = {"conditions": [{"type": "Ready", "status": "False"}]}
    new = {"conditions": [{"type": "Ready", "status": "True"}]}
    assert status_patch(old, new) == new
