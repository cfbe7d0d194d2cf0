"""The workers step planned before anything is applied: where replicas start, the Events."""

from __future__ import annotations

from matchops_operator.conditions import EventSpec
from matchops_operator.plans import plan_workers
from matchops_operator.scaling import History, Limits, Observation

LIMITS = Limits(
    min_replicas=1,
    max_replicas=4,
    target_backlog_per_replica=100,
    target_drain_seconds=60,
    scale_down_delay_seconds=300,
)
BUSY = Observation(at=1000.0, ready=550, consumers=0)


def test_a_new_pipeline_starts_from_the_deployment_else_min_replicas() -> None:
    assert plan_workers(LIMITS, None, None, {}, deployment_replicas=3).before.replicas == 3
    assert plan_workers(LIMITS, None, None, {}, deployment_replicas=None).before.replicas == 1


def test_memory_then_status_come_before_the_deployment() -> None:
    status = {"workers": {"desiredReplicas": 2}}
    assert plan_workers(LIMITS, None, None, status, 3).before.replicas == 2
    remembered = History(replicas=4)
    assert plan_workers(LIMITS, None, remembered, status, 3).before.replicas == 4


def test_an_observation_is_decided_on_and_scaling_is_an_event() -> None:
    planned = plan_workers(LIMITS, BUSY, History(replicas=1), {}, 1)
    assert (planned.before.replicas, planned.decision.replicas, planned.scaled) == (1, 4, True)
    assert planned.events("x-worker", created=True) == [
        EventSpec("Normal", "Created", "Created Deployment x-worker"),
        EventSpec(
            "Normal",
            "Scaled",
            "Scaled workers 1 → 4: backlog 550, throughput not measured yet, target 100 per "
            "replica (capped at maxReplicas 4)",
        ),
    ]


def test_without_an_observation_the_replicas_are_held() -> None:
    planned = plan_workers(LIMITS, None, History(replicas=2), {}, 2)
    assert (planned.decision.replicas, planned.decision.reason) == (
        2,
        "queue not observed; replicas kept",
    )
    assert not planned.scaled
    assert planned.events("x-worker", created=False) == []


def test_not_applied_keeps_the_replicas_and_what_was_measured() -> None:
    before = History(replicas=1, previous=Observation(at=990.0, ready=1700, consumers=1))
    planned = plan_workers(LIMITS, Observation(at=1000.0, ready=1600, consumers=1), before, {}, 1)
    assert planned.decision.replicas == 3
    kept = planned.not_applied()
    assert (kept.replicas, kept.reason) == (1, "not applied")
    assert kept.history.replicas == 1
    assert kept.history.throughput_per_replica == 10.0  # 100 messages in 10 s by one worker
    assert kept.history.previous == planned.decision.history.previous
