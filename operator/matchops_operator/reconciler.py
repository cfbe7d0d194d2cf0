"""One reconciliation of a MatchIngestion: read, build, apply, observe, scale, report.

The kopf handlers call `Reconciler.reconcile` on every change and on every poll; both paths run
the same code, one at a time per resource. Decisions are made by the pure modules (`spec`,
`desired`, `scaling`, `plans`, `retries`, `conditions`, `status`); this module only sequences
them with the two adapters (`kube`, `broker`) and keeps, per resource, what the last run
learned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import CronJob
from matchops_worker.topology import Topology

from matchops_operator import broker, conditions, scaling
from matchops_operator.conditions import EventSpec, Part
from matchops_operator.config import OperatorSettings
from matchops_operator.desired.common import Owner, child_name
from matchops_operator.desired.scraper import scraper_cronjob
from matchops_operator.desired.topology import stale_bindings, topology_for
from matchops_operator.desired.workers import settings_error, worker_deployment
from matchops_operator.kube import Kube
from matchops_operator.plans import WorkersPlan, created_event, plan_workers
from matchops_operator.problems import Problem, as_problem, stalled
from matchops_operator.retries import Attempts, after_attempt
from matchops_operator.sharing import Neighbour, display_name, endpoint_of, search_scope, sharers
from matchops_operator.spec import MatchIngestionSpec, SpecError, WorkersSpec, parse_spec
from matchops_operator.status import (
    OWNED,
    backlog_status,
    rfc3339,
    scraper_status,
    status_patch,
    topology_status,
    workers_status,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resource:
    """The parts of a MatchIngestion body a reconciliation reads."""

    owner: Owner
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Resource:
        metadata = body["metadata"]
        return cls(
            owner=Owner(metadata["name"], metadata["namespace"], metadata["uid"]),
            generation=int(metadata.get("generation") or 0),
            spec=body.get("spec") or {},
            status=body.get("status") or {},
        )


@dataclass(frozen=True)
class Outcome:
    """What a reconciliation ended with."""

    problems: tuple[Problem, ...] = ()
    # Seconds until the next attempt, when a failure keeps polling from doing any good.
    retry_after: float | None = None
    done: str = ""

    @property
    def summary(self) -> str:
        return "; ".join(f"{p.reason}: {p.message}" for p in self.problems) or self.done


@dataclass
class _Memory:
    """Per resource, what the last reconciliation learned (status may lag in kopf's body)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    status: dict[str, Any] | None = None
    generation: int = 0
    history: scaling.History | None = None
    # Failures that keep the queue from being read hold back the whole reconciliation.
    reconciling: Attempts = field(default_factory=Attempts)
    # Failures that keep the workers from being applied hold back that step, and the last one
    # stands (as WorkersReady) until it is tried again.
    workers: Attempts = field(default_factory=Attempts)
    workers_problem: Problem | None = None
    deleting: Attempts = field(default_factory=Attempts)
    # The last Event about the deletion: kopf may run the deletion again (while a poll ends),
    # and the same outcome is not told twice.
    deletion_event: EventSpec | None = None


class Reconciler:
    """Reconciles MatchIngestions through the Kubernetes and RabbitMQ adapters."""

    def __init__(
        self, kube: Kube, settings: OperatorSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._clock = clock
        self._memory: dict[str, _Memory] = {}

    async def close(self) -> None:
        """Release the API client's connections."""
        await self._kube.close()

    def forget(self, uid: str) -> None:
        """Drop what was kept for a deleted resource."""
        self._memory.pop(uid, None)

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        """Converge one MatchIngestion; failures end up in its status, Events and the Outcome.

        A spec already tried waits out the backoff of the last failure that kept the queue from
        being read (the Outcome then only says how long is left); a new spec is tried at once.
        """
        resource = Resource.from_body(body)
        memory = self._memory.setdefault(resource.owner.uid, _Memory())
        async with memory.lock:
            if resource.generation < memory.generation:
                # A body older than one already reconciled (a poll that waited for the lock
                # while a spec change was handled): acting on it would undo the change.
                return Outcome()
            now = self._clock()
            new_spec = resource.generation > memory.generation
            if new_spec:
                # A new spec is tried at once, every step of it.
                memory.reconciling = memory.workers = Attempts()
                memory.workers_problem = None
            elif not memory.reconciling.due(now):
                failures = memory.reconciling.failures
                return Outcome(
                    retry_after=memory.reconciling.remaining(now),
                    done=f"{failures} failures in a row; backing off",
                )
            memory.generation = resource.generation
            run = _Run(self._kube, self._settings, resource, memory, now, new_spec=new_spec)
            try:
                observed = await run.execute()
            except Exception as exc:
                # Each step reports its own failures; this is reporting itself failing (the
                # status patch): an Event, and another attempt after the backoff.
                problem = as_problem(exc)
                event = EventSpec("Warning", problem.reason, problem.message)
                await self._record(resource.owner, event)
                memory.reconciling = self._after(memory.reconciling, failed=True)
                return Outcome((problem,), memory.reconciling.remaining(self._clock()))
            if run.workers_tried:
                failed = run.workers_problem is not None
                memory.workers = self._after(memory.workers, failed=failed)
                memory.workers_problem = run.workers_problem
            # Polling goes on as usual while the queue can be read (e.g. a queue conflict).
            unobserved = bool(run.problems) and not observed
            memory.reconciling = self._after(memory.reconciling, failed=unobserved)
            if not unobserved:
                return Outcome(tuple(run.problems))
            return Outcome(tuple(run.problems), memory.reconciling.remaining(self._clock()))

    def _after(self, attempts: Attempts, *, failed: bool) -> Attempts:
        """A step's record after an attempt that ends now."""
        return after_attempt(
            attempts, failed=failed, now=self._clock(), backoff=self._settings.backoff
        )

    async def delete(self, body: Mapping[str, Any]) -> Outcome:
        """Honour deletionPolicy: Retain keeps the queues, Delete removes them, unless another
        MatchIngestion uses them too (see `sharing`).

        A broker that cannot be reached is retried with backoff (the resource stays until the
        queues are gone, or until deletionPolicy is changed to Retain). A Secret that is gone,
        as when its namespace is being deleted, leaves nothing to connect with: the queues stay
        on the broker and an Event says so, rather than blocking the deletion forever.
        """
        resource = Resource.from_body(body)
        owner = resource.owner
        memory = self._memory.setdefault(owner.uid, _Memory())
        try:
            spec = parse_spec(resource.spec)
            topology = topology_for(owner.name, spec.broker)
        except SpecError as exc:
            return Outcome(done=f"queues kept: the spec does not name them ({exc})")
        names = ", ".join(q.name for q in topology.queues)
        if spec.broker.deletion_policy == "Retain":
            return Outcome(done=f"deletionPolicy Retain: kept queues {names}")
        try:
            access = await _broker_access(self._kube, owner, spec)
            users = await _sharers(
                self._kube, owner, spec, access, topology, self._settings.namespaces
            )
            if users:
                message = (
                    f"queues {names} kept on the broker: MatchIngestion {', '.join(users)} "
                    "uses them too (they are deleted with the last MatchIngestion that uses "
                    "them, if its deletionPolicy is Delete)"
                )
                await self._record_deletion(
                    memory, owner, EventSpec("Normal", "QueuesKept", message)
                )
                return Outcome(done=message)
            await asyncio.to_thread(broker.delete_topology, access, topology)
        except Exception as exc:
            problem = as_problem(exc)
            if problem.reason in ("SecretNotFound", "SecretKeyNotFound"):
                message = f"queues {names} kept on the broker: {problem.message}"
                await self._record_deletion(
                    memory, owner, EventSpec("Warning", "QueuesKept", message)
                )
                return Outcome(done=message)
            if memory.deleting.failures == 0:
                message = (
                    f"cannot delete queues {names} (deletionPolicy Delete): {problem.message}; "
                    "retrying; set deletionPolicy: Retain to keep them and let go"
                )
                await self._record_deletion(
                    memory, owner, EventSpec("Warning", problem.reason, message)
                )
            memory.deleting = self._after(memory.deleting, failed=True)
            return Outcome((problem,), memory.deleting.remaining(self._clock()))
        message = f"deletionPolicy Delete: deleted queues {names}"
        await self._record_deletion(memory, owner, EventSpec("Normal", "QueuesDeleted", message))
        return Outcome(done=message)

    async def _record(self, owner: Owner, event: EventSpec) -> None:
        await _record(self._kube, owner, event)

    async def _record_deletion(self, memory: _Memory, owner: Owner, event: EventSpec) -> None:
        """Record an Event about the deletion, unless it is the one recorded last."""
        if event != memory.deletion_event:
            memory.deletion_event = event
            await self._record(owner, event)


@dataclass(frozen=True)
class _Workers:
    decision: scaling.Decision
    deployment: Deployment | None
    part: Part
    scaled: bool = False


class _Run:
    """One reconciliation's working state."""

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        resource: Resource,
        memory: _Memory,
        now: float,
        *,
        new_spec: bool = False,
    ) -> None:
        self.kube = kube
        # A spec not reconciled before by this operator: worth the checks a poll skips.
        self.new_spec = new_spec
        self.settings = settings
        self.resource = resource
        self.owner = resource.owner
        self.memory = memory
        self.now = now
        self.previous: Mapping[str, Any] = memory.status or resource.status
        self.problems: list[Problem] = []
        self.events: list[EventSpec] = []
        # Whether the workers step was tried (not waiting out a backoff), and how it failed.
        self.workers_tried = False
        self.workers_problem: Problem | None = None

    async def execute(self) -> bool:
        """Reconcile and report; whether the queue could be observed."""
        try:
            spec = parse_spec(self.resource.spec)
            topology = topology_for(self.owner.name, spec.broker)
        except SpecError as exc:
            problem = self._failed(stalled("InvalidSpec", str(exc)))
            await self._report([problem.part(kind) for kind in conditions.PART_TYPES], {})
            return False

        report, topology_part = await self._broker(spec, topology)
        cronjob, scraper_part = await self._scraper(spec, topology)
        observation = report.observation if report is not None else None
        workers = await self._workers(spec, topology, observation)

        blocks: dict[str, Any] = {
            "workers": workers_status(
                workers.decision.history,
                _ready_replicas(workers.deployment),
                self.previous.get("workers"),
                scaled=(self.now, workers.decision.reason) if workers.scaled else None,
            ),
        }
        if report is not None and report.declared:
            # What is on the broker now; until a declaration completes, what was before.
            blocks["topology"] = topology_status(topology, report.policy)
        if report is not None and report.observation is not None:
            blocks["backlog"] = backlog_status(
                report.observation, report.dead_lettered, self.previous.get("backlog")
            )
        if cronjob is not None:
            blocks["scraper"] = scraper_status(cronjob)
        elif spec.scraper is None:
            blocks["scraper"] = None  # removed from the spec: the block goes too
        await self._report([topology_part, scraper_part, workers.part], blocks)
        self.memory.history = workers.decision.history
        return observation is not None

    def _failed(self, problem: Problem) -> Problem:
        self.problems.append(problem)
        return problem

    async def _broker(
        self, spec: MatchIngestionSpec, topology: Topology
    ) -> tuple[broker.BrokerReport | None, Part]:
        """Declare the topology, unbind the keys it dropped, read the queue; the report and
        TopologyReady."""
        stale = stale_bindings(topology, self.previous.get("topology"))
        try:
            access = await _broker_access(self.kube, self.owner, spec)
            report = await asyncio.to_thread(broker.sync, access, topology, stale)
        except Exception as exc:
            return None, self._failed(as_problem(exc)).part(conditions.TOPOLOGY_READY)
        if self.new_spec:
            await self._warn_if_shared(spec, access, topology)
        if report.problem is not None:
            return report, self._failed(report.problem).part(conditions.TOPOLOGY_READY)
        return report, conditions.topology_part(topology, report.policy)

    async def _warn_if_shared(
        self, spec: MatchIngestionSpec, access: broker.BrokerAccess, topology: Topology
    ) -> None:
        """A Warning Event when other MatchIngestions use the same queue: each would size
        its own workers to the whole backlog."""
        try:
            users = await _sharers(
                self.kube, self.owner, spec, access, topology, self.settings.namespaces
            )
        except Exception:
            log.warning("could not look for other users of %s", topology.queue, exc_info=True)
            return
        if users:
            message = (
                f"queue {topology.queue} is also used by MatchIngestion {', '.join(users)}: "
                "each sizes its own workers to the whole backlog, and deleting one keeps the "
                "queues for the others; give each pipeline its own queue"
            )
            self.events.append(EventSpec("Warning", "QueueShared", message))

    async def _scraper(
        self, spec: MatchIngestionSpec, topology: Topology
    ) -> tuple[CronJob | None, Part]:
        """Apply (or remove) the scraper CronJob; it as applied and ScraperReady."""
        name = child_name(self.owner, "scraper")
        try:
            existing = await self.kube.get(CronJob, self.owner, name)
            if spec.scraper is None:
                if existing is not None:
                    await self.kube.delete_child(existing, self.owner)
                return None, conditions.scraper_part(name, None, self.now)
            desired = scraper_cronjob(
                self.owner, spec.scraper, spec.broker, topology, self.settings.image_pull_policy
            )
            applied = await self.kube.apply(desired, existing, self.owner)
        except Exception as exc:
            return None, self._failed(as_problem(exc)).part(conditions.SCRAPER_READY)
        if applied.created:
            self.events.append(created_event("CronJob", name))
        return applied.object, conditions.scraper_part(name, applied.object, self.now)

    async def _workers(
        self,
        spec: MatchIngestionSpec,
        topology: Topology,
        observation: scaling.Observation | None,
    ) -> _Workers:
        """Decide the replicas and apply the worker Deployment; with WorkersReady."""
        name = child_name(self.owner, "worker")
        limits = _limits(spec.workers)

        def plan(deployment: Deployment | None) -> WorkersPlan:
            replicas = _replicas(deployment) if deployment is not None else None
            return plan_workers(limits, observation, self.memory.history, self.previous, replicas)

        waiting = self.memory.workers_problem
        if waiting is not None and not self.memory.workers.due(self.now):
            # The last failure stands until its backoff has passed; the backlog is still read.
            return self._workers_not_applied(plan(None), waiting)
        self.workers_tried = True
        planned: WorkersPlan | None = None
        try:
            existing = await self.kube.get(Deployment, self.owner, name)
            planned = plan(existing)
            await self.kube.secret_value(
                self.owner.namespace, spec.database.secret_ref, "the PostgreSQL DSN"
            )
            desired = worker_deployment(
                self.owner,
                spec,
                topology,
                image=self._worker_image(spec),
                replicas=planned.decision.replicas,
                pull_policy=self.settings.image_pull_policy,
            )
            refused = settings_error(desired)
            if refused is not None:
                # Applied, it would replace running workers with pods that cannot start.
                raise stalled("InvalidWorkerSettings", f"spec.workers.env: {refused}")
            applied = await self.kube.apply(desired, existing, self.owner)
        except Exception as exc:
            self.workers_problem = as_problem(exc)
            return self._workers_not_applied(planned or plan(None), self.workers_problem)
        self.events.extend(planned.events(name, applied.created))
        part = conditions.workers_part(name, applied.object)
        return _Workers(planned.decision, applied.object, part, planned.scaled)

    def _workers_not_applied(self, planned: WorkersPlan, problem: Problem) -> _Workers:
        part = self._failed(problem).part(conditions.WORKERS_READY)
        return _Workers(planned.not_applied(), None, part)

    def _worker_image(self, spec: MatchIngestionSpec) -> str:
        image = spec.workers.image or self.settings.worker_image
        if not image:
            raise stalled(
                "NoWorkerImage",
                "spec.workers.image is empty and the operator has no image of its own "
                "(MATCHOPS_OPERATOR_IMAGE); set one of them",
            )
        return image

    async def _report(self, parts: list[Part], blocks: dict[str, Any]) -> None:
        """Write what changed in status, then record the Events of this run."""
        previous_conditions = self.previous.get("conditions") or []
        kept = {k: v for k, v in self.previous.items() if k in OWNED and k not in blocks}
        new = {
            **kept,
            **{k: v for k, v in blocks.items() if v is not None},
            "observedGeneration": self.resource.generation,
            "conditions": conditions.render(
                parts,
                generation=self.resource.generation,
                now=rfc3339(self.now),
                previous=previous_conditions,
            ),
        }
        patch = status_patch(self.previous, new)
        if patch:
            await self.kube.patch_status(self.owner, patch)
        self.memory.status = new
        for event in [*self.events, *conditions.events(parts, previous_conditions)]:
            await _record(self.kube, self.owner, event)


async def _record(kube: Kube, owner: Owner, event: EventSpec) -> None:
    try:
        await kube.record(owner, event)
    except Exception:
        # An Event is a courtesy: failing to post one must not fail the reconciliation.
        log.exception("could not record Event %s on %s", event.reason, owner.name)


async def _broker_access(kube: Kube, owner: Owner, spec: MatchIngestionSpec) -> broker.BrokerAccess:
    ref = spec.broker.secret_ref
    url = await kube.secret_value(owner.namespace, ref, "the broker's AMQP URL")
    management = spec.broker.management_secret_ref
    management_url = None
    if management is not None:
        management_url = await kube.secret_value(
            owner.namespace, management, "the RabbitMQ management API URL"
        )
    return broker.BrokerAccess(
        amqp_url=url,
        source=ref.source(owner.namespace),
        management_url=management_url,
        management_source=management.source(owner.namespace) if management else None,
    )


async def _sharers(
    kube: Kube,
    owner: Owner,
    spec: MatchIngestionSpec,
    access: broker.BrokerAccess,
    topology: Topology,
    served: Sequence[str],
) -> list[str]:
    """The other MatchIngestions that use this one's queues on the same broker, except those
    being deleted; those of other namespaces as `namespace/name`."""
    mine = frozenset(queue.name for queue in topology.queues)
    neighbours = []
    for body in await _ingestions_around(kube, owner, served):
        metadata = body.get("metadata") or {}
        if metadata.get("uid") == owner.uid or metadata.get("deletionTimestamp"):
            continue
        namespace = metadata.get("namespace") or owner.namespace
        try:
            other = parse_spec(body.get("spec") or {})
            queues = frozenset(q.name for q in topology_for(metadata["name"], other.broker).queues)
        except SpecError:
            continue
        if not mine & queues:
            continue  # no queue of the same name: its broker does not matter
        ref = other.broker.secret_ref
        same_secret = namespace == owner.namespace and ref == spec.broker.secret_ref
        endpoint = None
        if not same_secret:
            # A Secret that cannot be read names no broker this pipeline could share.
            with contextlib.suppress(Problem):
                url = await kube.secret_value(namespace, ref, "a broker URL")
                endpoint = endpoint_of(url)
        name = display_name(namespace, metadata["name"], owner.namespace)
        neighbours.append(Neighbour(name, queues, same_secret, endpoint))
    return sharers(mine, endpoint_of(access.amqp_url), neighbours)


async def _ingestions_around(
    kube: Kube, owner: Owner, served: Sequence[str]
) -> list[dict[str, Any]]:
    """The MatchIngestions the operator may list (see `search_scope`): in every namespace, or
    in those it serves. When it may not list every namespace, it looks in the pipeline's own."""
    scope = search_scope(served, owner.namespace)
    if scope is None:
        try:
            return await kube.ingestions(None)
        except Problem as exc:
            if exc.reason != "ListForbidden":
                raise
            log.warning(
                "looking for other users of the queues in %s only: %s", owner.namespace, exc
            )
            scope = (owner.namespace,)
    return [body for namespace in scope for body in await kube.ingestions(namespace)]


def _limits(workers: WorkersSpec) -> scaling.Limits:
    return scaling.Limits(
        min_replicas=workers.min_replicas,
        max_replicas=workers.max_replicas,
        target_backlog_per_replica=workers.target_backlog_per_replica,
        target_drain_seconds=workers.target_drain_seconds,
        scale_down_delay_seconds=workers.scale_down_delay_seconds,
    )


def _replicas(deployment: Deployment) -> int:
    spec = deployment.spec
    return spec.replicas if spec is not None and spec.replicas is not None else 1


def _ready_replicas(deployment: Deployment | None) -> int:
    status = deployment.status if deployment is not None else None
    return (status.readyReplicas or 0) if status is not None else 0
