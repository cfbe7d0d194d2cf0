"""Conditions follow kstatus; Events are recorded for changes only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lightkube.models.apps_v1 import DeploymentCondition, DeploymentSpec, DeploymentStatus
from lightkube.models.batch_v1 import CronJobSpec, CronJobStatus, JobSpec, JobTemplateSpec
from lightkube.models.core_v1 import ObjectReference, PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import CronJob
from matchops_operator import conditions
from matchops_operator.conditions import (
    SCRAPER_READY,
    TOPOLOGY_READY,
    WORKERS_READY,
    EventSpec,
    Part,
    render,
    scraper_part,
    topology_part,
    workers_part,
)
from matchops_worker.topology import build_topology

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"
TOPOLOGY = Part(TOPOLOGY_READY, "ready", "TopologyDeclared", "exchange matches, queue matches")
SCRAPER = Part(SCRAPER_READY, "ready", "ScraperScheduled", "CronJob x-scraper runs on '0 6 * * *'")
WORKERS = Part(WORKERS_READY, "ready", "ScaledToZero", "Deployment x-worker has no workers")


def by_type(rendered: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    return {c["type"]: c for c in rendered}


def test_all_parts_ready_means_ready_without_reconciling_or_stalled() -> None:
    rendered = by_type(render([TOPOLOGY, SCRAPER, WORKERS], generation=3, now=NOW))
    assert set(rendered) == {"Ready", TOPOLOGY_READY, SCRAPER_READY, WORKERS_READY}
    assert rendered["Ready"]["status"] == "True"
    assert rendered["Ready"]["reason"] == "Ready"
    assert all(c["observedGeneration"] == 3 for c in rendered.values())


def test_a_stalled_part_makes_stalled_true_and_ready_false() -> None:
    conflict = Part(TOPOLOGY_READY, "stalled", "QueueConflict", "queue matches exists")
    rendered = by_type(render([conflict, SCRAPER, WORKERS], generation=1, now=NOW))
    assert rendered["Ready"]["status"] == "False"
    assert rendered["Ready"]["reason"] == "QueueConflict"
    assert rendered["Stalled"] == {
        "type": "Stalled",
        "status": "True",
        "reason": "QueueConflict",
        "message": "queue matches exists",
        "observedGeneration": 1,
        "lastTransitionTime": NOW,
    }
    assert "Reconciling" not in rendered
    assert rendered[TOPOLOGY_READY]["status"] == "False"


def test_progress_makes_reconciling_true() -> None:
    rolling = Part(WORKERS_READY, "progressing", "WorkersProgressing", "0 of 3 workers ready")
    rendered = by_type(render([TOPOLOGY, SCRAPER, rolling], generation=1, now=NOW))
    assert rendered["Ready"]["status"] == "False"
    assert rendered["Reconciling"]["status"] == "True"
    assert rendered["Reconciling"]["reason"] == "WorkersProgressing"
    assert "Stalled" not in rendered


def test_ready_tells_the_most_serious_story() -> None:
    rolling = Part(WORKERS_READY, "progressing", "WorkersProgressing", "rolling out")
    failed = Part(SCRAPER_READY, "degraded", "LastRunFailed", "last run failed")
    unreachable = Part(TOPOLOGY_READY, "retrying", "BrokerUnreachable", "connection refused")
    rendered = by_type(render([unreachable, failed, rolling], generation=1, now=NOW))
    assert rendered["Ready"]["reason"] == "LastRunFailed"
    assert rendered["Reconciling"]["reason"] == "BrokerUnreachable"


def test_degraded_alone_is_neither_reconciling_nor_stalled() -> None:
    failed = Part(SCRAPER_READY, "degraded", "LastRunFailed", "last run failed")
    rendered = by_type(render([TOPOLOGY, failed, WORKERS], generation=1, now=NOW))
    assert rendered["Ready"]["status"] == "False"
    assert "Reconciling" not in rendered
    assert "Stalled" not in rendered


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = render([TOPOLOGY, SCRAPER, WORKERS], generation=1, now=NOW)
    moved = Part(WORKERS_READY, "ready", "WorkersAvailable", "2 of 2 workers ready")
    second = by_type(render([TOPOLOGY, SCRAPER, moved], generation=2, now=LATER, previous=first))
    assert second[WORKERS_READY]["lastTransitionTime"] == NOW
    assert second[WORKERS_READY]["reason"] == "WorkersAvailable"
    assert second[WORKERS_READY]["observedGeneration"] == 2
    broken = Part(WORKERS_READY, "stalled", "SecretNotFound", "Secret x/postgres not found")
    third = by_type(render([TOPOLOGY, SCRAPER, broken], generation=2, now=LATER, previous=first))
    assert third[WORKERS_READY]["lastTransitionTime"] == LATER
    assert third["Ready"]["lastTransitionTime"] == LATER


def test_unchanged_parts_render_identically() -> None:
    first = render([TOPOLOGY, SCRAPER, WORKERS], generation=1, now=NOW)
    assert render([TOPOLOGY, SCRAPER, WORKERS], generation=1, now=LATER, previous=first) == first


def test_first_reconcile_records_each_part_and_ready() -> None:
    found = conditions.events([TOPOLOGY, SCRAPER, WORKERS], [])
    assert [e.reason for e in found] == [
        "TopologyDeclared",
        "ScraperScheduled",
        "ScaledToZero",
        "Ready",
    ]
    assert all(e.type == "Normal" for e in found)


def test_nothing_changed_records_nothing() -> None:
    previous = render([TOPOLOGY, SCRAPER, WORKERS], generation=1, now=NOW)
    assert conditions.events([TOPOLOGY, SCRAPER, WORKERS], previous) == []


def test_a_failure_is_warned_once_and_the_recovery_noted() -> None:
    healthy = render([TOPOLOGY, SCRAPER, WORKERS], generation=1, now=NOW)
    missing = Part(TOPOLOGY_READY, "stalled", "SecretNotFound", "Secret ns/rabbitmq not found")
    assert conditions.events([missing, SCRAPER, WORKERS], healthy) == [
        EventSpec("Warning", "SecretNotFound", "Secret ns/rabbitmq not found")
    ]
    failing = render([missing, SCRAPER, WORKERS], generation=1, now=NOW, previous=healthy)
    assert conditions.events([missing, SCRAPER, WORKERS], failing) == []
    other = Part(TOPOLOGY_READY, "stalled", "BrokerAuthenticationFailed", "refused")
    assert [e.reason for e in conditions.events([other, SCRAPER, WORKERS], failing)] == [
        "BrokerAuthenticationFailed"
    ]
    recovered = conditions.events([TOPOLOGY, SCRAPER, WORKERS], failing)
    assert [(e.type, e.reason) for e in recovered] == [
        ("Normal", "TopologyDeclared"),
        ("Normal", "Ready"),
    ]


def test_workers_rolling_out_is_not_warned() -> None:
    healthy = render([TOPOLOGY, SCRAPER, WORKERS], generation=1, now=NOW)
    rolling = Part(WORKERS_READY, "progressing", "WorkersProgressing", "0 of 4 workers ready")
    assert conditions.events([TOPOLOGY, SCRAPER, rolling], healthy) == []


def test_topology_part_names_what_was_declared() -> None:
    topology = build_topology(
        "matches", routing_keys=["matches", "matches.process"], queue_type="classic"
    )
    part = topology_part(topology, "matchops.matches")
    assert part.ready
    assert part.message == (
        "exchange matches, queue matches (classic), 3 retry queues, dead-letter queue "
        "matches.dlq, policy matchops.matches"
    )


def cronjob(
    suspend: bool = False, status: CronJobStatus | None = None, deadline: int | None = 3600
) -> CronJob:
    return CronJob(
        metadata=ObjectMeta(name="x-scraper"),
        spec=CronJobSpec(
            schedule="0 6 * * *",
            timeZone="UTC",
            suspend=suspend,
            startingDeadlineSeconds=300,
            jobTemplate=JobTemplateSpec(
                spec=JobSpec(activeDeadlineSeconds=deadline, template=PodTemplateSpec())
            ),
        ),
        status=status,
    )


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, 1, hour, minute, tzinfo=UTC)


NOON = at(12).timestamp()


def test_scraper_part() -> None:
    assert scraper_part("x-scraper", None, NOON).reason == "NoScraper"
    assert scraper_part("x-scraper", cronjob(suspend=True), NOON).reason == "ScraperSuspended"
    scheduled = scraper_part("x-scraper", cronjob(), NOON)
    assert (scheduled.state, scheduled.reason) == ("ready", "ScraperScheduled")
    assert scheduled.message == "CronJob x-scraper runs on '0 6 * * *' (UTC)"
    ok = CronJobStatus(lastScheduleTime=at(6), lastSuccessfulTime=at(6))
    assert scraper_part("x-scraper", cronjob(status=ok), NOON).ready


def test_a_failed_run_is_the_scraper_degraded() -> None:
    status = CronJobStatus(lastScheduleTime=at(7), lastSuccessfulTime=at(6))
    failed = scraper_part("x-scraper", cronjob(status=status), NOON)
    assert (failed.state, failed.reason) == ("degraded", "LastRunFailed")
    assert failed.message.startswith(
        "the scraper Job of CronJob x-scraper scheduled at 2026-01-01T07:00:00Z did not succeed: "
        "it failed, or ran past its activeDeadlineSeconds (3600s);"
    )
    never = CronJobStatus(lastScheduleTime=at(7))
    assert scraper_part("x-scraper", cronjob(status=never), NOON).reason == "LastRunFailed"


@pytest.mark.parametrize(
    ("now", "ready"),
    [
        (at(7, 59).timestamp(), True),  # a deadline of an hour, the Job started up to 5 min late
        (at(8, 6).timestamp(), False),
    ],
)
def test_a_job_running_past_its_deadline_is_the_scraper_stalled(now: float, ready: bool) -> None:
    running = CronJobStatus(
        lastScheduleTime=at(7), lastSuccessfulTime=at(6), active=[ObjectReference(name="x-1")]
    )
    part = scraper_part("x-scraper", cronjob(status=running), now)
    assert part.ready is ready
    if not ready:
        assert (part.state, part.reason) == ("stalled", "ScraperJobOverdue")
        assert part.message == (
            "scraper Job x-1 of CronJob x-scraper, scheduled at 2026-01-01T07:00:00Z, is still "
            "running after 3960s, past its activeDeadlineSeconds (3600s); no other scrape starts "
            "while it runs: see why with kubectl describe job x-1, then kubectl delete job x-1"
        )
    # Suspending the CronJob does not end the Job: the overdue Job is still told.
    suspended = scraper_part("x-scraper", cronjob(suspend=True, status=running), now)
    assert suspended.reason == ("ScraperSuspended" if ready else "ScraperJobOverdue")


def test_a_cronjob_without_a_job_deadline_never_calls_a_job_overdue() -> None:
    running = CronJobStatus(lastScheduleTime=at(7), active=[ObjectReference(name="x-1")])
    part = scraper_part("x-scraper", cronjob(status=running, deadline=None), at(23).timestamp())
    assert part.ready
    failed = CronJobStatus(lastScheduleTime=at(7))
    part = scraper_part("x-scraper", cronjob(status=failed, deadline=None), NOON)
    assert "activeDeadlineSeconds" not in part.message


def deployment(
    replicas: int,
    generation: int = 2,
    observed: int = 2,
    available: int = 0,
    updated: int = 0,
    progress_reason: str | None = None,
) -> Deployment:
    status_conditions = (
        [
            DeploymentCondition(
                type="Progressing",
                status="False",
                reason=progress_reason,
                message="ReplicaSet has timed out progressing.",
            )
        ]
        if progress_reason
        else None
    )
    return Deployment(
        metadata=ObjectMeta(name="x-worker", generation=generation),
        spec=DeploymentSpec(replicas=replicas, selector=LabelSelector(), template=None),  # type: ignore[arg-type]
        status=DeploymentStatus(
            observedGeneration=observed,
            availableReplicas=available,
            updatedReplicas=updated,
            conditions=status_conditions,
        ),
    )


def test_workers_part() -> None:
    assert workers_part("x-worker", deployment(0)).reason == "ScaledToZero"
    assert workers_part("x-worker", deployment(3, observed=1)).reason == "WorkersProgressing"
    pending = workers_part("x-worker", deployment(3, available=1, updated=3))
    assert (pending.state, pending.message) == ("progressing", "1 of 3 workers ready")
    ready = workers_part("x-worker", deployment(3, available=3, updated=3))
    assert (ready.state, ready.reason) == ("ready", "WorkersAvailable")
    stuck = workers_part("x-worker", deployment(3, progress_reason="ProgressDeadlineExceeded"))
    assert (stuck.state, stuck.reason) == ("stalled", "RolloutStalled")


def test_ready_message_sums_the_parts_up_briefly() -> None:
    parts = [
        topology_part(build_topology("matches"), None),
        scraper_part("x-scraper", cronjob(), NOON),
        workers_part("x-worker", deployment(2, available=2, updated=2)),
    ]
    ready = by_type(render(parts, generation=1, now=NOW))["Ready"]
    assert ready["message"] == "queue matches declared; scraper scheduled; 2 workers ready"
