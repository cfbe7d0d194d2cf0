"""The worker Deployment: consumers of the pipeline's queue, sized by the autoscaler."""

from __future__ import annotations

import math

from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import (
    Container,
    ContainerPort,
    HTTPGetAction,
    PodSpec,
    PodTemplateSpec,
    Probe,
)
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from matchops_worker.config import ConfigError, load_config
from matchops_worker.durations import format_duration
from matchops_worker.topology import Topology

from matchops_operator.desired.common import (
    Owner,
    PullPolicy,
    container_security,
    labels,
    merge_env,
    metadata,
    plain_env,
    pod_security,
    resources,
    secret_env,
    selector_labels,
    tmp_mount,
    tmp_volume,
)
from matchops_operator.spec import MatchIngestionSpec

CONTAINER = "worker"
MIGRATE_CONTAINER = "migrate"
METRICS_PORT = 9100
METRICS_PORT_NAME = "metrics"
# The worker's image runs as any uid; a fixed non-root one lets runAsNonRoot be verified.
RUN_AS = 65532
# On SIGTERM a worker stops consuming, then stores and acknowledges the batch in hand: the
# batch may still be filling (batchWait) and its transaction may run up to the statement
# timeout, plus a few seconds to acknowledge it and exit.
EXIT_ALLOWANCE_SECONDS = 5
REVISIONS_KEPT = 3


def worker_deployment(
    owner: Owner,
    spec: MatchIngestionSpec,
    topology: Topology,
    *,
    image: str,
    replicas: int,
    pull_policy: PullPolicy | None = None,
) -> Deployment:
    """The worker Deployment at `replicas`, running `image` with the topology in its env."""
    workers = spec.workers
    env = [
        secret_env("MATCHOPS_AMQP_URL", spec.broker.secret_ref),
        secret_env("MATCHOPS_DATABASE_DSN", spec.database.secret_ref),
        *plain_env(worker_settings(spec, topology)),
    ]
    env = merge_env(env, workers.env)
    security = container_security()
    migrate = Container(
        name=MIGRATE_CONTAINER,
        image=image,
        imagePullPolicy=pull_policy,
        # Safe when many pods start at once: the migration takes an advisory lock.
        command=["matchops-worker", "migrate"],
        # The user's variables too: libpq reads PGSSLMODE, PGSSLROOTCERT and the like.
        env=merge_env(
            [
                secret_env("MATCHOPS_DATABASE_DSN", spec.database.secret_ref),
                *plain_env({"MATCHOPS_LOG_LEVEL": workers.log_level}),
            ],
            workers.env,
        ),
        resources=resources(workers.resources),
        securityContext=security,
        volumeMounts=[tmp_mount()],
    )
    worker = Container(
        name=CONTAINER,
        image=image,
        imagePullPolicy=pull_policy,
        command=["matchops-worker"],
        env=env,
        ports=[ContainerPort(name=METRICS_PORT_NAME, containerPort=METRICS_PORT)],
        livenessProbe=_probe("/healthz", period=10, failures=3),
        readinessProbe=_probe("/readyz", period=5, failures=2),
        resources=resources(workers.resources),
        securityContext=security,
        volumeMounts=[tmp_mount()],
    )
    pod_labels = labels(owner, "worker")
    return Deployment(
        apiVersion="apps/v1",
        kind="Deployment",
        metadata=metadata(owner, "worker"),
        spec=DeploymentSpec(
            replicas=replicas,
            revisionHistoryLimit=REVISIONS_KEPT,
            selector=LabelSelector(matchLabels=selector_labels(owner, "worker")),
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels=pod_labels),
                spec=PodSpec(
                    initContainers=[migrate],
                    containers=[worker],
                    automountServiceAccountToken=False,
                    securityContext=pod_security(RUN_AS),
                    terminationGracePeriodSeconds=grace_period_seconds(spec),
                    volumes=[tmp_volume()],
                ),
            ),
        ),
    )


def worker_settings(spec: MatchIngestionSpec, topology: Topology) -> dict[str, str]:
    """The worker's non-secret configuration, in the variables `matchops_worker.config` reads."""
    workers = spec.workers
    return {
        "MATCHOPS_QUEUE": topology.queue,
        "MATCHOPS_EXCHANGE": topology.exchange,
        "MATCHOPS_ROUTING_KEYS": ",".join(topology.routing_keys),
        "MATCHOPS_QUEUE_TYPE": topology.queue_type,
        "MATCHOPS_RETRY_DELAYS": ",".join(format_duration(d) for d in topology.retry_delays),
        "MATCHOPS_DEAD_LETTER_QUEUE": topology.dead_letter_queue,
        "MATCHOPS_PREFETCH": str(workers.prefetch),
        "MATCHOPS_BATCH_SIZE": str(workers.batch_size),
        "MATCHOPS_BATCH_WAIT": workers.batch_wait,
        "MATCHOPS_METRICS_PORT": str(METRICS_PORT),
        "MATCHOPS_LOG_LEVEL": workers.log_level,
        # The operator declares the topology (and repairs it); workers only consume.
        "MATCHOPS_DECLARE_TOPOLOGY": "false",
    }


# Required by the worker and set from Secrets, so unreadable here: a stand-in value lets the
# worker's own check pass them and judge the rest.
_FROM_SECRETS = frozenset({"MATCHOPS_AMQP_URL", "MATCHOPS_DATABASE_DSN"})


def settings_error(deployment: Deployment) -> str | None:
    """Why the worker would refuse to start with the Deployment's settings, or None.

    Checks what the operator can read: every variable with a literal value, `workers.env`'s
    included. Variables read from Secrets or ConfigMaps are the worker's to check at start-up.
    """
    assert deployment.spec is not None
    assert deployment.spec.template.spec is not None
    (worker,) = deployment.spec.template.spec.containers
    env = {
        var.name: var.value if var.value is not None else "from-a-secret"
        for var in worker.env or []
        if var.value is not None or var.name in _FROM_SECRETS
    }
    try:
        load_config(env)
    except ConfigError as exc:
        return str(exc)
    return None


def grace_period_seconds(spec: MatchIngestionSpec) -> int:
    """Time for a terminating worker to fill, store and acknowledge its last batch."""
    workers = spec.workers
    return EXIT_ALLOWANCE_SECONDS + math.ceil(
        workers.batch_wait_seconds + workers.statement_timeout_seconds
    )


def _probe(path: str, *, period: int, failures: int) -> Probe:
    return Probe(
        httpGet=HTTPGetAction(path=path, port=METRICS_PORT_NAME),
        periodSeconds=period,
        failureThreshold=failures,
        timeoutSeconds=2,
    )
