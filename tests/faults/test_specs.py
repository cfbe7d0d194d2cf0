"""Malformed MatchIngestion specs: refused by the API server with a message a person can act
on, or, where only the operator can tell, reported as a condition without a crash."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from matchops_devenv.access import ClusterAccess, KubectlError
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.namespace import CRD, Namespace, install_crd, sample
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.waiting import wait_for

from .operator_run import OperatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

MINIMAL = "minimal.yaml"


@pytest.fixture(scope="module")
def crd(cluster: ClusterAccess) -> None:
    install_crd(cluster, CRD, "matchingestions.matchops.dev")


NO_SPEC = {
    "apiVersion": "matchops.dev/v1alpha1",
    "kind": "MatchIngestion",
    "metadata": {"name": "x"},
}


def without(path: str) -> dict[str, Any]:
    """The minimal sample with the field at `a.b.c` removed."""
    manifest = sample(MINIMAL)
    node = manifest
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    del node[leaf]
    return manifest


# tests/operator refuses ten other specs (min > max replicas, unknown queue type, a duration
# without unit, decreasing delays, dead-letter queue = queue, reserved queue name, batch over
# prefetch, a bad schedule, unknown deletion policy, a bad batch wait) and a long name.
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("no spec", NO_SPEC, "spec: Required value"),
    ("no broker", without("spec.broker"), "spec.broker: Required value"),
    ("no database", without("spec.database"), "spec.database: Required value"),
    (
        "broker secretRef without key",
        without("spec.broker.secretRef.key"),
        "spec.broker.secretRef.key: Required value",
    ),
    (
        "database secretRef without name",
        without("spec.database.secretRef.name"),
        "spec.database.secretRef.name: Required value",
    ),
    (
        "empty Secret name",
        sample(MINIMAL, broker__secretRef={"name": "", "key": "url"}),
        "spec.broker.secretRef.name in body should be at least 1 chars long",
    ),
    (
        "managementSecretRef without key",
        sample(MINIMAL, broker__managementSecretRef={"name": "rabbitmq"}),
        "spec.broker.managementSecretRef.key: Required value",
    ),
    (
        "reserved exchange name",
        sample(MINIMAL, broker__exchange="amq.direct"),
        """spec.broker.exchange: Invalid value: "amq.direct": names starting with 'amq.' are """
        "reserved by RabbitMQ",
    ),
    (
        "reserved dead-letter queue name",
        sample(MINIMAL, broker__deadLetterQueue="amq.dlq"),
        """spec.broker.deadLetterQueue: Invalid value: "amq.dlq": names starting with 'amq.' """
        "are reserved by RabbitMQ",
    ),
    (
        "dead-letter queue named like the resource, queue unset",
        sample(MINIMAL, broker__deadLetterQueue="u14-northeast"),
        "spec.broker.deadLetterQueue must differ from the queue (spec.broker.queue, or "
        "metadata.name when unset): dead-lettered messages would be consumed again.",
    ),
    (
        "queue name over 200 characters",
        sample(MINIMAL, broker__queue="q" * 201),
        "spec.broker.queue: Too long: may not be more than 200 bytes",
    ),
    (
        "no routing keys",
        sample(MINIMAL, broker__routingKeys=[]),
        "spec.broker.routingKeys in body should have at least 1 items",
    ),
    (
        "a routing key twice",
        sample(MINIMAL, broker__routingKeys=["a", "a"]),
        'spec.broker.routingKeys[1]: Duplicate value: "a"',
    ),
    (
        "33 routing keys",
        sample(MINIMAL, broker__routingKeys=[f"k{i}" for i in range(33)]),
        "spec.broker.routingKeys: Too many: 33: must have at most 32 items",
    ),
    (
        "no retry delays",
        sample(MINIMAL, broker__retry={"delays": []}),
        "spec.broker.retry.delays in body should have at least 1 items",
    ),
    (
        "11 retry delays",
        sample(MINIMAL, broker__retry={"delays": ["1s"] * 11}),
        "spec.broker.retry.delays: Too many: 11: must have at most 10 items",
    ),
    (
        "a delay in days",
        sample(MINIMAL, broker__retry={"delays": ["1d"]}),
        """spec.broker.retry.delays[0]: Invalid value: "1d": spec.broker.retry.delays[0] in """
        "body should match '^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$'",
    ),
    (
        "queue type in capitals",
        sample(MINIMAL, broker__queueType="Quorum"),
        'spec.broker.queueType: Unsupported value: "Quorum": supported values: "quorum", "classic"',
    ),
    (
        "negative minReplicas",
        sample(MINIMAL, workers__minReplicas=-1),
        "spec.workers.minReplicas in body should be greater than or equal to 0",
    ),
    (
        "maxReplicas over 1000",
        sample(MINIMAL, workers__maxReplicas=1001),
        "spec.workers.maxReplicas in body should be less than or equal to 1000",
    ),
    (
        "maxReplicas as text",
        sample(MINIMAL, workers__maxReplicas="ten"),
        "spec.workers.maxReplicas in body must be of type integer",
    ),
    (
        "zero prefetch",
        sample(MINIMAL, workers__prefetch=0),
        "spec.workers.prefetch in body should be greater than or equal to 1",
    ),
    (
        "prefetch over 65535",
        sample(MINIMAL, workers__prefetch=70000),
        "spec.workers.prefetch in body should be less than or equal to 65535",
    ),
    (
        "batch size over 10000",
        sample(MINIMAL, workers__batchSize=10001, workers__prefetch=20000),
        "spec.workers.batchSize in body should be less than or equal to 10000",
    ),
    (
        "zero backlog target",
        sample(MINIMAL, workers__targetBacklogPerReplica=0),
        "spec.workers.targetBacklogPerReplica in body should be greater than or equal to 1",
    ),
    (
        "zero drain target",
        sample(MINIMAL, workers__targetDrainSeconds=0),
        "spec.workers.targetDrainSeconds in body should be greater than or equal to 1",
    ),
    (
        "negative scale-down delay",
        sample(MINIMAL, workers__scaleDownDelaySeconds=-5),
        "spec.workers.scaleDownDelaySeconds in body should be greater than or equal to 0",
    ),
    (
        "unknown log level",
        sample(MINIMAL, workers__logLevel="verbose"),
        'spec.workers.logLevel: Unsupported value: "verbose": supported values: "debug", '
        '"info", "warning", "error"',
    ),
    ("scraper without image", without("spec.scraper.image"), "spec.scraper.image: Required value"),
    (
        "scraper without schedule",
        without("spec.scraper.schedule"),
        "spec.scraper.schedule: Required value",
    ),
    (
        "empty time zone",
        sample(MINIMAL, scraper__timeZone=""),
        "spec.scraper.timeZone in body should be at least 1 chars long",
    ),
    (
        "env entry without name",
        sample(MINIMAL, scraper__env=[{"value": "x"}]),
        "spec.scraper.env[0].name: Required value",
    ),
    (
        "env variable twice",
        sample(MINIMAL, scraper__env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        'spec.scraper.env[1]: Duplicate value: {"name":"A"}',
    ),
    (
        "workers env setting the queue",
        sample(MINIMAL, workers__env=[{"name": "MATCHOPS_QUEUE", "value": "other"}]),
        'spec.workers.env[0].name: Invalid value: "MATCHOPS_QUEUE": workers.env must not set '
        "MATCHOPS_QUEUE: the operator sets it from the spec",
    ),
    (
        "suspend as text",
        sample(MINIMAL, scraper__suspend="maybe"),
        "spec.scraper.suspend in body must be of type boolean",
    ),
]


BAD_QUANTITY = pytest.param(
    sample(MINIMAL, workers__resources={"limits": {"cpu": "lots"}}),
    "spec.workers.resources.limits: Invalid value: each limit must be a "
    "Kubernetes quantity, such as 250m, 2, 512Mi or 1Gi",
    id="a resource quantity that is not one",
)
BAD_REQUEST = pytest.param(
    sample(MINIMAL, scraper__resources={"requests": {"memory": "1 GB"}}),
    "spec.scraper.resources.requests: Invalid value: each request must be a Kubernetes quantity",
    id="a resource request that is not a quantity",
)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [*(pytest.param(*case[1:], id=case[0]) for case in REFUSED), BAD_QUANTITY, BAD_REQUEST],
)
def test_the_api_server_refuses_with_a_clear_message(
    cluster: ClusterAccess, crd: None, namespace: str, manifest: dict[str, Any], message: str
) -> None:
    space = Namespace(cluster, namespace)
    with pytest.raises(KubectlError) as refused:
        space.apply(manifest, "--dry-run=server")
    assert message in refused.value.stderr


def test_the_unchanged_sample_is_accepted(
    cluster: ClusterAccess, crd: None, namespace: str
) -> None:
    # The refusals above come from each change, not from the sample they start from.
    Namespace(cluster, namespace).apply(sample(MINIMAL), "--dry-run=server")


@dataclass(frozen=True)
class Detected:
    """A spec the API server accepts and only the operator can find fault with."""

    name: str
    broker_secret: dict[str, str] | None = None  # None: the working URLs
    database_secret: dict[str, str] | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    # What already exists on the broker: (kind, name, arguments or exchange type)
    existing: tuple[tuple[str, str, Any], ...] = ()
    condition: str = "TopologyReady"
    reason: str = ""
    message: str = ""


def detected_cases(namespace: str, vhost: Vhost, rabbitmq: RabbitMQ) -> list[Detected]:
    good = {"url": vhost.url, "management-url": rabbitmq.management_url}
    wrong_password = rabbitmq.management_url.replace(
        f":{quote(rabbitmq.password, safe='')}@", ":not-the-password@"
    )
    missing_vhost = vhost.url.rsplit("/", 1)[0] + "/no-such-vhost"
    amqp = "does not hold an AMQP URL; expected amqp[s]://user:password@host:port/vhost"
    return [
        Detected(
            "broker-key",
            broker_secret={"uri": vhost.url},
            reason="SecretKeyNotFound",
            message=f"Secret {namespace}/broker-key-broker has no key 'url' (it has: uri); add "
            "the broker's AMQP URL under that key",
        ),
        Detected(
            "database-key",
            database_secret={"url": "postgresql://db/x"},
            condition="WorkersReady",
            reason="SecretKeyNotFound",
            message=f"Secret {namespace}/database-key-db has no key 'dsn' (it has: url); add "
            "the PostgreSQL DSN under that key",
        ),
        Detected(
            "http-scheme",
            broker_secret={"url": "http://rabbitmq:15672/"},
            reason="InvalidBrokerURL",
            message=f"Secret {namespace}/http-scheme-broker key 'url' {amqp}",
        ),
        Detected(
            "not-a-url",
            broker_secret={"url": "rabbitmq, port 5672"},
            reason="InvalidBrokerURL",
            message=f"Secret {namespace}/not-a-url-broker key 'url' {amqp}",
        ),
        Detected(
            "management-scheme",
            broker_secret={**good, "management-url": vhost.url},
            reason="InvalidManagementURL",
            message=f"Secret {namespace}/management-scheme-broker key 'management-url' does "
            "not hold a management API URL; expected http[s]://user:password@host:port",
        ),
        Detected(
            "management-password",
            broker_secret={**good, "management-url": wrong_password},
            reason="ManagementAuthenticationFailed",
            message="the RabbitMQ management API at http://127.0.0.1:"
            f"{rabbitmq.management_port} refused the credentials",
        ),
        Detected(
            "no-vhost",
            broker_secret={"url": missing_vhost},
            reason="BrokerAccessDenied",
            message=f"denied the user in Secret {namespace}/no-vhost-broker key 'url' access "
            "to the vhost: \"ConnectionClosedByBroker: (530) 'NOT_ALLOWED - vhost "
            "no-such-vhost not found'",
        ),
        Detected(
            "exchange-type",
            existing=(("exchange", "exchange-type", "fanout"),),
            reason="QueueConflict",
            message="exchange exchange-type already exists with other settings "
            "(PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'exchange-type'",
        ),
        Detected(
            "dlq-arguments",
            existing=(("queue", "dlq-arguments.dlq", {"x-max-length": 5}),),
            reason="QueueConflict",
            message="queue dlq-arguments.dlq already exists with other settings "
            "(PRECONDITION_FAILED - inequivalent arg 'x-max-length'",
        ),
        Detected(
            "worker-setting",
            spec={"workers__env": [{"name": "MATCHOPS_STATEMENT_TIMEOUT", "value": "soon"}]},
            condition="WorkersReady",
            reason="InvalidWorkerSettings",
            message="spec.workers.env: invalid worker configuration: MATCHOPS_STATEMENT_TIMEOUT: "
            "invalid duration 'soon'",
        ),
        Detected(
            "time-zone",
            spec={"scraper__timeZone": "Mars/Olympus"},
            condition="ScraperReady",
            reason="ApplyFailed",
            message='spec.timeZone: Invalid value: "Mars/Olympus": unknown time zone Mars/Olympus',
        ),
        Detected(
            "schedule",
            spec={"scraper__schedule": "61 * * * *"},
            condition="ScraperReady",
            reason="ApplyFailed",
            message='spec.schedule: Invalid value: "61 * * * *": end of range (61) above '
            "maximum (59)",
        ),
    ]


def declare_existing(vhost: Vhost, cases: list[Detected]) -> None:
    """What a legacy producer or an earlier setup left on the broker."""
    with vhost.channel() as channel:
        for case in cases:
            for kind, name, detail in case.existing:
                if kind == "exchange":
                    channel.exchange_declare(name, exchange_type=detail, durable=True)
                else:
                    channel.queue_declare(name, durable=True, arguments=detail)


def manifest_for(case: Detected, working: dict[str, str]) -> dict[str, Any]:
    """The minimal sample under the case's name, reading the case's own Secrets."""
    manifest = sample(MINIMAL, **case.spec)
    manifest["metadata"]["name"] = case.name
    broker = manifest["spec"]["broker"]
    broker["secretRef"] = {"name": f"{case.name}-broker", "key": "url"}
    if "management-url" in (case.broker_secret or working):
        broker["managementSecretRef"] = {"name": f"{case.name}-broker", "key": "management-url"}
    manifest["spec"]["database"]["secretRef"] = {"name": f"{case.name}-db", "key": "dsn"}
    return manifest


def warning_reasons(space: Namespace, name: str) -> set[str]:
    return {e["reason"] for e in space.events(name) if e["type"] == "Warning"}


def test_what_only_the_operator_can_tell_is_a_condition_not_a_crash(
    cluster: ClusterAccess,
    crd: None,
    namespace: str,
    vhost: Vhost,
    rabbitmq: RabbitMQ,
    tmp_path: Path,
) -> None:
    space = Namespace(cluster, namespace)
    cases = detected_cases(namespace, vhost, rabbitmq)
    working = {"url": vhost.url, "management-url": rabbitmq.management_url}
    declare_existing(vhost, cases)
    for case in cases:
        space.secret(f"{case.name}-broker", case.broker_secret or working)
        space.secret(f"{case.name}-db", case.database_secret or {"dsn": "postgresql://db/x"})
        space.apply(manifest_for(case, working))
    operator = OperatorProcess(tmp_path, cluster, namespace, "operator", "--standalone").start()
    try:
        for case in cases:
            found = space.wait_condition(case.name, case.condition, "False", case.reason)
            assert case.message in found["message"], (case.name, found["message"])
            stalled = space.wait_condition(case.name, "Stalled", "True", case.reason)
            assert stalled["message"] == found["message"]
            resource = space.get("matchingestion", case.name)
            assert resource["status"]["observedGeneration"] == resource["metadata"]["generation"]
            assert rabbitmq.password not in json.dumps(resource)
            # kopf posts Events from a queue of its own: the Event may follow the status.
            wait_for(
                lambda case=case: case.reason in warning_reasons(space, case.name),
                f"a Warning Event {case.reason} about {case.name}",
                30,
            )
        time.sleep(3)  # retries and polls go on
        assert operator.running(), operator.log[-3000:]
    finally:
        code = operator.stop()
    assert code == 0
    # kopf's words for an exception a handler did not expect.
    assert "failed with an exception" not in operator.log, operator.log[-5000:]
