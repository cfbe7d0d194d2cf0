"""What a reconciliation's workers step will do, decided before anything is applied (pure).

Where the replicas start from (the autoscaler's memory, else the status, else the Deployment,
else `minReplicas`), whether the autoscaler decides on an observation or holds without one,
and which Events applying the result deserves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from matchops_operator import scaling
from matchops_operator.conditions import EventSpec
from matchops_operator.status import history_from_status


@dataclass(frozen=True)
class WorkersPlan:
    """The replicas the workers start from, and the decision to apply."""

    before: scaling.History
    decision: scaling.Decision

    @property
    def scaled(self) -> bool:
        return self.decision.replicas != self.before.replicas

    def not_applied(self) -> scaling.Decision:
        """The decision when nothing was applied: what the measurements taught is kept, the
        replicas stay as they were."""
        kept = replace(self.decision.history, replicas=self.before.replicas)
        return scaling.Decision(self.before.replicas, "not applied", kept)

    def events(self, deployment: str, created: bool) -> list[EventSpec]:
        """The Events of applying the decision to the Deployment."""
        found = [created_event("Deployment", deployment)] if created else []
        if self.scaled:
            found.append(
                EventSpec(
                    "Normal",
                    "Scaled",
                    f"Scaled workers {self.before.replicas} → {self.decision.replicas}: "
                    f"{self.decision.reason}",
                )
            )
        return found


def plan_workers(
    limits: scaling.Limits,
    observation: scaling.Observation | None,
    remembered: scaling.History | None,
    status: Mapping[str, Any],
    deployment_replicas: int | None,
) -> WorkersPlan:
    """The workers step for this poll; `deployment_replicas` is None when no Deployment is known.

    The memory of earlier polls (`remembered`, else what `status` recorded) comes first: the
    Deployment's replicas only count for a resource the operator knows nothing about yet.
    """
    start = deployment_replicas if deployment_replicas is not None else limits.min_replicas
    before = remembered or history_from_status(status, start)
    if observation is None:
        return WorkersPlan(before, scaling.hold(limits, before))
    return WorkersPlan(before, scaling.decide(observation, limits, before))


def created_event(kind: str, name: str) -> EventSpec:
    """The Event of a child the operator created."""
    return EventSpec("Normal", "Created", f"Created {kind} {name}")
