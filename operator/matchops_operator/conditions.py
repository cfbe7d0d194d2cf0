"""What the conditions should say, and which Events a change of them deserves.

Three parts of a pipeline each get a condition (TopologyReady, ScraperReady, WorkersReady); the
summary follows kstatus, so Flux, `kubectl wait --for=condition=Ready` and Argo CD read health
without custom code:

- `Ready` is always present: True when every part is ready, else the most serious part's
  reason and message.
- `Stalled` is present (True) only when a part needs a person to act (a missing Secret, refused
  credentials, a queue that exists with other settings, an invalid spec).
- `Reconciling` is present (True) only while the operator is still getting somewhere on its own
  (workers rolling out, a broker it keeps retrying).
- Every condition carries the generation it describes; `lastTransitionTime` moves only when
  the status flips.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import CronJob
from matchops_worker.topology import Topology

from matchops_operator.status import rfc3339

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
TOPOLOGY_READY = "TopologyReady"
SCRAPER_READY = "ScraperReady"
WORKERS_READY = "WorkersReady"
PART_TYPES = (TOPOLOGY_READY, SCRAPER_READY, WORKERS_READY)

# ready: working as specified. progressing: not there yet, on its way without help (no
# warning). retrying: failing for a cause that may pass (warned, retried with backoff).
# stalled: failing until someone changes something. degraded: set up, but its last run failed.
State = Literal["ready", "progressing", "retrying", "stalled", "degraded"]
# Which part's story `Ready` tells when several are not ready.
_SEVERITY: dict[State, int] = {
    "stalled": 0,
    "degraded": 1,
    "retrying": 2,
    "progressing": 3,
    "ready": 4,
}


@dataclass(frozen=True)
class Part:
    """The verdict on one part of the pipeline."""

    type: str
    state: State
    reason: str
    message: str
    # A few words for the Ready message when every part is ready.
    summary: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "ready"


@dataclass(frozen=True)
class Condition:
    """One entry of `status.conditions`, before the bookkeeping fields."""

    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event to record on the MatchIngestion."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def summarize(parts: Sequence[Part]) -> list[Condition]:
    """Ready, then Stalled or Reconciling when True, then one condition per part."""
    worst = min(parts, key=lambda part: _SEVERITY[part.state])
    if worst.ready:
        summary = [Condition(READY, True, "Ready", _ready_message(parts))]
    else:
        summary = [Condition(READY, False, worst.reason, worst.message)]
    if worst.state == "stalled":
        summary.append(Condition(STALLED, True, worst.reason, worst.message))
    else:
        moving = [part for part in parts if part.state in ("retrying", "progressing")]
        if moving:
            first = min(moving, key=lambda part: _SEVERITY[part.state])
            summary.append(Condition(RECONCILING, True, first.reason, first.message))
    return summary + [Condition(p.type, p.ready, p.reason, p.message) for p in parts]


def render(
    parts: Sequence[Part],
    *,
    generation: int,
    now: str,
    previous: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The `status.conditions` list for these parts, keeping unchanged transition times."""
    old = {str(c.get("type")): c for c in previous}
    rendered = []
    for condition in summarize(parts):
        status = "True" if condition.status else "False"
        before = old.get(condition.type)
        since = now
        if before is not None and before.get("status") == status:
            since = str(before.get("lastTransitionTime") or now)
        rendered.append(
            {
                "type": condition.type,
                "status": status,
                "reason": condition.reason,
                "message": condition.message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            }
        )
    return rendered


def events(parts: Sequence[Part], previous: Iterable[Mapping[str, Any]]) -> list[EventSpec]:
    """Events for what changed since the `previous` conditions: failures, recoveries, Ready."""
    old = {str(c.get("type")): c for c in previous}
    found: list[EventSpec] = []
    for part in parts:
        before = old.get(part.type)
        was_true = before is not None and before.get("status") == "True"
        new_cause = was_true or before is None or before.get("reason") != part.reason
        if part.ready and not was_true:
            found.append(EventSpec("Normal", part.reason, part.message))
        elif not part.ready and part.state != "progressing" and new_cause:
            found.append(EventSpec("Warning", part.reason, part.message))
    ready_before = old.get(READY)
    if all(part.ready for part in parts) and (
        ready_before is None or ready_before.get("status") != "True"
    ):
        found.append(EventSpec("Normal", "Ready", _ready_message(parts)))
    return found


def _ready_message(parts: Sequence[Part]) -> str:
    return "; ".join(part.summary or part.message for part in parts)


def topology_part(topology: Topology, policy: str | None) -> Part:
    """TopologyReady once the exchange, queues, bindings (and policy) are declared."""
    retries = len(topology.retry_queues)
    message = (
        f"exchange {topology.exchange}, queue {topology.queue} ({topology.queue_type}), "
        f"{retries} retry queue{'' if retries == 1 else 's'}, "
        f"dead-letter queue {topology.dead_letter_queue}"
    )
    if policy:
        message += f", policy {policy}"
    return Part(
        TOPOLOGY_READY, "ready", "TopologyDeclared", message, f"queue {topology.queue} declared"
    )


def scraper_part(name: str, cronjob: CronJob | None, now: float) -> Part:
    """ScraperReady from the applied CronJob (None: no scraper in the spec) at time `now`."""
    if cronjob is None:
        return Part(
            SCRAPER_READY,
            "ready",
            "NoScraper",
            "no scraper configured; producers run elsewhere",
            "no scraper",
        )
    spec, status = cronjob.spec, cronjob.status
    deadline = _job_deadline(cronjob)
    last = status.lastScheduleTime if status is not None else None
    if status is not None and last is not None and status.active and deadline:
        # A Job starts at most startingDeadlineSeconds after its schedule time: still running
        # past that and its deadline, it has outlived the deadline (as a Job created before
        # the CronJob had one does; the Job controller ends the others).
        late = (spec.startingDeadlineSeconds or 0) if spec is not None else 0
        running = now - last.timestamp()
        if running > late + deadline:
            job = status.active[0].name
            return Part(
                SCRAPER_READY,
                "stalled",
                "ScraperJobOverdue",
                f"scraper Job {job} of CronJob {name}, scheduled at {rfc3339(last.timestamp())}, "
                f"is still running after {round(running)}s, past its activeDeadlineSeconds "
                f"({deadline}s); no other scrape starts while it runs: see why with "
                f"kubectl describe job {job}, then kubectl delete job {job}",
            )
    if spec is not None and spec.suspend:
        return Part(
            SCRAPER_READY,
            "ready",
            "ScraperSuspended",
            f"CronJob {name} is suspended",
            "scraper suspended",
        )
    if status is not None and last is not None and not status.active:
        succeeded = status.lastSuccessfulTime
        if succeeded is None or succeeded < last:
            ran_out = f", or ran past its activeDeadlineSeconds ({deadline}s)" if deadline else ""
            return Part(
                SCRAPER_READY,
                "degraded",
                "LastRunFailed",
                f"the scraper Job of CronJob {name} scheduled at {rfc3339(last.timestamp())} "
                f"did not succeed: it failed{ran_out}; kubectl get jobs and kubectl describe "
                "job <job> tell which, its pods' logs why (kubectl logs job/<job>)",
            )
    schedule = f"{spec.schedule!r} ({spec.timeZone})" if spec is not None else "its schedule"
    return Part(
        SCRAPER_READY,
        "ready",
        "ScraperScheduled",
        f"CronJob {name} runs on {schedule}",
        "scraper scheduled",
    )


def _job_deadline(cronjob: CronJob) -> int | None:
    template = cronjob.spec.jobTemplate if cronjob.spec is not None else None
    job = template.spec if template is not None else None
    return job.activeDeadlineSeconds if job is not None else None


def workers_part(name: str, deployment: Deployment) -> Part:
    """WorkersReady from the applied Deployment's rollout."""
    spec, status = deployment.spec, deployment.status
    desired = spec.replicas if spec is not None and spec.replicas is not None else 1
    generation = deployment.metadata.generation if deployment.metadata else None
    if desired == 0:
        return Part(
            WORKERS_READY,
            "ready",
            "ScaledToZero",
            f"Deployment {name} is scaled to zero",
            "workers scaled to zero",
        )
    if status is None or (status.observedGeneration or 0) < (generation or 0):
        return Part(
            WORKERS_READY, "progressing", "WorkersProgressing", f"Deployment {name} is rolling out"
        )
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return Part(
                WORKERS_READY,
                "stalled",
                "RolloutStalled",
                f"Deployment {name}: {condition.message}; "
                "kubectl describe pods shows why its pods do not become ready",
            )
    available = status.availableReplicas or 0
    updated = status.updatedReplicas or 0
    if updated >= desired and available >= desired:
        return Part(
            WORKERS_READY,
            "ready",
            "WorkersAvailable",
            f"{available} of {desired} workers ready",
            f"{available} worker{'' if available == 1 else 's'} ready",
        )
    return Part(
        WORKERS_READY,
        "progressing",
        "WorkersProgressing",
        f"{available} of {desired} workers ready",
    )
