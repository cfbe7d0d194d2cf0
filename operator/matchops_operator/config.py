"""The operator's own settings (flags and environment), as one explicit value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matchops_operator.desired.common import PullPolicy

PULL_POLICIES: tuple[PullPolicy, ...] = ("Always", "IfNotPresent", "Never")


def is_pattern(namespace: str) -> bool:
    """Whether a served namespace is one of kopf's patterns (glob, negation, list), not a name."""
    return any(char in namespace for char in "*?[!,")


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs; every field has a flag and an environment variable (main.py)."""

    # Namespaces whose MatchIngestions are handled; empty means every namespace.
    namespaces: tuple[str, ...] = ()
    # Seconds between backlog polls (and topology and children drift repair) per resource.
    poll_interval: float = 10.0
    # Worker image when spec.workers.image is empty: the operator's own image.
    worker_image: str = ""
    # imagePullPolicy of the containers the operator creates; None leaves Kubernetes' default.
    image_pull_policy: PullPolicy | None = None
    # Port of the liveness endpoint (/healthz); None disables it.
    liveness_port: int | None = 8080
    # Without peering, several operator replicas would all act: run one, or enable peering.
    standalone: bool = False
    peering_name: str = "matchops"
    # Backoff after a failed reconcile: first delay, doubled per failure up to the maximum.
    retry_min_delay: float = 5.0
    retry_max_delay: float = 60.0
    # Kubeconfig file; None means in-cluster credentials or $KUBECONFIG.
    kubeconfig: Path | None = None

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1-based)."""
        exponent = max(failures - 1, 0)
        return float(min(self.retry_max_delay, self.retry_min_delay * 2 ** min(exponent, 16)))
