"""The desired CronJob and Deployment built from a spec, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest
from matchops_operator.desired.common import Owner
from matchops_operator.desired.scraper import scraper_cronjob
from matchops_operator.desired.topology import stale_bindings, topology_for
from matchops_operator.desired.workers import (
    grace_period_seconds,
    settings_error,
    worker_deployment,
)
from matchops_operator.spec import (
    OPERATOR_WORKER_ENV,
    MatchIngestionSpec,
    SpecError,
    parse_spec,
)
from matchops_operator.status import topology_status
from matchops_worker.topology import Binding, build_topology

OWNER = Owner(name="u14-northeast", namespace="ingest", uid="3f1c0b5e-uid")

SPEC: dict[str, Any] = {
    "scraper": {
        "image": "registry.example/match-scraper:1.4.0",
        "schedule": "0 6 * * *",
        "timeZone": "America/New_York",
        "args": ["scrape", "--age-group", "U14"],
        "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "MATCHOPS_QUEUE", "value": "x"}],
        "resources": {"requests": {"cpu": "100m"}},
    },
    "broker": {
        "secretRef": {"name": "rabbitmq", "key": "url"},
        "queue": "matches",
        "routingKeys": ["matches", "matches.process"],
        "queueType": "classic",
    },
    "workers": {"batchWait": "2s", "prefetch": 300, "batchSize": 250},
    "database": {"secretRef": {"name": "postgres", "key": "dsn"}},
}


@pytest.fixture
def spec() -> MatchIngestionSpec:
    return parse_spec(SPEC)


def env_of(container: Any) -> dict[str, Any]:
    return {var.name: var for var in container.env}


def test_cronjob_runs_the_scraper_on_its_schedule(spec: MatchIngestionSpec) -> None:
    assert spec.scraper is not None
    cronjob = scraper_cronjob(
        OWNER, spec.scraper, spec.broker, topology_for(OWNER.name, spec.broker)
    )
    body = cronjob.to_dict()
    assert body["metadata"]["name"] == "u14-northeast-scraper"
    assert body["metadata"]["namespace"] == "ingest"
    assert body["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "matchops.dev/v1alpha1",
            "kind": "MatchIngestion",
            "name": "u14-northeast",
            "uid": "3f1c0b5e-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    cron = body["spec"]
    assert cron["schedule"] == "0 6 * * *"
    assert cron["timeZone"] == "America/New_York"
    assert cron["suspend"] is False
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["successfulJobsHistoryLimit"] == 3
    assert cron["failedJobsHistoryLimit"] == 3
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 3600
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/match-scraper:1.4.0"
    assert container["args"] == ["scrape", "--age-group", "U14"]
    assert container["resources"] == {"requests": {"cpu": "100m"}}
    assert "imagePullPolicy" not in container


def test_a_scraper_job_ends_at_its_deadline() -> None:
    spec = parse_spec({**SPEC, "scraper": {**SPEC["scraper"], "activeDeadlineSeconds": 900}})
    assert spec.scraper is not None
    cronjob = scraper_cronjob(
        OWNER, spec.scraper, spec.broker, topology_for(OWNER.name, spec.broker)
    )
    assert cronjob.spec.jobTemplate.spec.activeDeadlineSeconds == 900  # type: ignore[union-attr]


def test_cronjob_reads_the_broker_url_by_reference_under_both_names(
    spec: MatchIngestionSpec,
) -> None:
    assert spec.scraper is not None
    cronjob = scraper_cronjob(
        OWNER, spec.scraper, spec.broker, topology_for(OWNER.name, spec.broker)
    )
    (container,) = cronjob.spec.jobTemplate.spec.template.spec.containers  # type: ignore[union-attr]
    env = env_of(container)
    for name in ("MATCHOPS_AMQP_URL", "CELERY_BROKER_URL"):
        assert env[name].value is None
        ref = env[name].valueFrom.secretKeyRef
        assert (ref.name, ref.key) == ("rabbitmq", "url")
    assert env["MATCHOPS_EXCHANGE"].value == "matches"
    assert env["MATCHOPS_ROUTING_KEY"].value == "matches"
    # The user's own variable wins over the operator's, and names stay unique.
    assert env["MATCHOPS_QUEUE"].value == "x"
    assert env["LOG_LEVEL"].value == "debug"
    assert len(container.env) == len(env)


def test_pull_policy_setting_applies_to_every_container(spec: MatchIngestionSpec) -> None:
    assert spec.scraper is not None
    topology = topology_for(OWNER.name, spec.broker)
    cronjob = scraper_cronjob(OWNER, spec.scraper, spec.broker, topology, "Never")
    deployment = worker_deployment(
        OWNER, spec, topology, image="matchops:dev", replicas=1, pull_policy="IfNotPresent"
    )
    (scraper,) = cronjob.spec.jobTemplate.spec.template.spec.containers  # type: ignore[union-attr]
    assert scraper.imagePullPolicy == "Never"
    pod = deployment.spec.template.spec  # type: ignore[union-attr]
    assert {c.imagePullPolicy for c in [*pod.containers, *pod.initContainers]} == {"IfNotPresent"}


def test_deployment_runs_workers_with_the_topology_and_secret_references(
    spec: MatchIngestionSpec,
) -> None:
    topology = topology_for(OWNER.name, spec.broker)
    deployment = worker_deployment(OWNER, spec, topology, image="matchops:1.0", replicas=4)
    body = deployment.to_dict()
    assert body["metadata"]["name"] == "u14-northeast-worker"
    assert body["spec"]["replicas"] == 4
    assert body["spec"]["selector"] == {
        "matchLabels": {
            "matchops.dev/ingestion": "u14-northeast",
            "app.kubernetes.io/component": "worker",
        }
    }
    pod = deployment.spec.template.spec  # type: ignore[union-attr]
    (worker,) = pod.containers
    assert worker.image == "matchops:1.0"
    assert worker.command == ["matchops-worker"]
    env = env_of(worker)
    assert env["MATCHOPS_AMQP_URL"].valueFrom.secretKeyRef.name == "rabbitmq"
    assert env["MATCHOPS_DATABASE_DSN"].valueFrom.secretKeyRef.name == "postgres"
    assert env["MATCHOPS_DATABASE_DSN"].valueFrom.secretKeyRef.key == "dsn"
    plain = {name: var.value for name, var in env.items() if var.value is not None}
    assert plain == {
        "MATCHOPS_QUEUE": "matches",
        "MATCHOPS_EXCHANGE": "matches",
        "MATCHOPS_ROUTING_KEYS": "matches,matches.process",
        "MATCHOPS_QUEUE_TYPE": "classic",
        "MATCHOPS_RETRY_DELAYS": "10s,1m,5m",
        "MATCHOPS_DEAD_LETTER_QUEUE": "matches.dlq",
        "MATCHOPS_PREFETCH": "300",
        "MATCHOPS_BATCH_SIZE": "250",
        "MATCHOPS_BATCH_WAIT": "2s",
        "MATCHOPS_METRICS_PORT": "9100",
        "MATCHOPS_LOG_LEVEL": "info",
        "MATCHOPS_DECLARE_TOPOLOGY": "false",
    }


def test_worker_configuration_is_what_the_worker_reads(spec: MatchIngestionSpec) -> None:
    """The env the Deployment sets loads into the same topology in the worker."""
    from matchops_worker.config import load_config

    topology = topology_for(OWNER.name, spec.broker)
    deployment = worker_deployment(OWNER, spec, topology, image="i", replicas=1)
    (worker,) = deployment.spec.template.spec.containers  # type: ignore[union-attr]
    env = {var.name: var.value or "from-a-secret" for var in worker.env}
    config = load_config(env)
    assert config.topology == topology
    assert (config.prefetch, config.batch_size, config.batch_wait) == (300, 250, 2.0)
    assert config.declare_topology is False
    # The grace period counts on the worker's own statement timeout.
    assert config.statement_timeout == spec.workers.statement_timeout_seconds


def test_migration_runs_first_with_only_the_database_secret(spec: MatchIngestionSpec) -> None:
    deployment = worker_deployment(
        OWNER, spec, topology_for(OWNER.name, spec.broker), image="matchops:1.0", replicas=1
    )
    (migrate,) = deployment.spec.template.spec.initContainers  # type: ignore[union-attr]
    assert migrate.command == ["matchops-worker", "migrate"]
    assert migrate.image == "matchops:1.0"
    assert [var.name for var in migrate.env] == ["MATCHOPS_DATABASE_DSN", "MATCHOPS_LOG_LEVEL"]


def test_workers_are_probed_on_their_health_endpoints(spec: MatchIngestionSpec) -> None:
    deployment = worker_deployment(
        OWNER, spec, topology_for(OWNER.name, spec.broker), image="i", replicas=1
    )
    (worker,) = deployment.spec.template.spec.containers  # type: ignore[union-attr]
    assert worker.ports[0].containerPort == 9100
    assert worker.livenessProbe.httpGet.path == "/healthz"
    assert worker.readinessProbe.httpGet.path == "/readyz"
    assert worker.livenessProbe.httpGet.port == worker.ports[0].name


def test_every_container_runs_restricted(spec: MatchIngestionSpec) -> None:
    assert spec.scraper is not None
    topology = topology_for(OWNER.name, spec.broker)
    pods = [
        worker_deployment(OWNER, spec, topology, image="i", replicas=1).spec.template.spec,  # type: ignore[union-attr]
        scraper_cronjob(
            OWNER, spec.scraper, spec.broker, topology
        ).spec.jobTemplate.spec.template.spec,  # type: ignore[union-attr]
    ]
    for pod in pods:
        assert pod.securityContext.runAsNonRoot is True
        assert pod.securityContext.seccompProfile.type == "RuntimeDefault"
        assert pod.automountServiceAccountToken is False
        for container in [*pod.containers, *(pod.initContainers or [])]:
            security = container.securityContext
            assert security.allowPrivilegeEscalation is False
            assert security.readOnlyRootFilesystem is True
            assert security.runAsNonRoot is True
            assert security.capabilities.drop == ["ALL"]
            assert security.seccompProfile.type == "RuntimeDefault"
            assert [m.mountPath for m in container.volumeMounts] == ["/tmp"]


def test_grace_period_covers_filling_and_committing_a_batch(spec: MatchIngestionSpec) -> None:
    # The 2 s batch wait, the 30 s statement timeout, 5 s to acknowledge and exit.
    assert grace_period_seconds(spec) == 37
    deployment = worker_deployment(
        OWNER, spec, topology_for(OWNER.name, spec.broker), image="i", replicas=1
    )
    assert deployment.spec.template.spec.terminationGracePeriodSeconds == 37  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("timeout", "grace"),
    [
        ({"value": "2m"}, 127),
        ({"value": "500ms"}, 8),
        # Unknown to the operator: the worker's default counts.
        ({"valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "timeout"}}}, 37),
        # Refused by the worker at start-up, with its own message.
        ({"value": "soon"}, 37),
    ],
)
def test_grace_period_follows_the_workers_statement_timeout(
    timeout: dict[str, Any], grace: int
) -> None:
    workers = {**SPEC["workers"], "env": [{"name": "MATCHOPS_STATEMENT_TIMEOUT", **timeout}]}
    assert grace_period_seconds(parse_spec({**SPEC, "workers": workers})) == grace


def test_workers_env_is_added_to_the_operators() -> None:
    extra = [
        {"name": "MATCHOPS_STATEMENT_TIMEOUT", "value": "1m"},
        {
            "name": "PGSSLMODE",
            "valueFrom": {"configMapKeyRef": {"name": "t", "key": "f"}},
        },
    ]
    spec = parse_spec({**SPEC, "workers": {**SPEC["workers"], "env": extra}})
    deployment = worker_deployment(
        OWNER, spec, topology_for(OWNER.name, spec.broker), image="i", replicas=1
    )
    (worker,) = deployment.spec.template.spec.containers  # type: ignore[union-attr]
    names = [var.name for var in worker.env]
    assert names[-2:] == ["MATCHOPS_STATEMENT_TIMEOUT", "PGSSLMODE"]
    assert len(names) == len(set(names))
    env = env_of(worker)
    assert env["MATCHOPS_STATEMENT_TIMEOUT"].value == "1m"
    assert env["PGSSLMODE"].valueFrom.configMapKeyRef.name == "t"
    assert env["MATCHOPS_QUEUE"].value == "matches"
    (migrate,) = deployment.spec.template.spec.initContainers  # type: ignore[union-attr]
    assert [var.name for var in migrate.env] == [
        "MATCHOPS_DATABASE_DSN",
        "MATCHOPS_LOG_LEVEL",
        "MATCHOPS_STATEMENT_TIMEOUT",
        "PGSSLMODE",
    ]


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ([], None),
        ([{"name": "MATCHOPS_STATEMENT_TIMEOUT", "value": "2m"}], None),
        # Read at start-up by the worker, which reports it there.
        (
            [
                {
                    "name": "MATCHOPS_BATCH_IDLE",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ],
            None,
        ),
        (
            [{"name": "MATCHOPS_STATEMENT_TIMEOUT", "value": "soon"}],
            "invalid worker configuration: MATCHOPS_STATEMENT_TIMEOUT: invalid duration 'soon'",
        ),
        (
            [{"name": "MATCHOPS_BATCH_IDLE", "value": "-1s"}],
            "invalid worker configuration: MATCHOPS_BATCH_IDLE",
        ),
    ],
)
def test_settings_the_worker_would_refuse_are_found_before_applying(
    extra: list[dict[str, Any]], error: str | None
) -> None:
    spec = parse_spec({**SPEC, "workers": {**SPEC["workers"], "env": extra}})
    deployment = worker_deployment(
        OWNER, spec, topology_for(OWNER.name, spec.broker), image="i", replicas=1
    )
    found = settings_error(deployment)
    if error is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(error)


def test_the_operator_sets_exactly_the_variables_workers_env_cannot(
    spec: MatchIngestionSpec,
) -> None:
    deployment = worker_deployment(
        OWNER, spec, topology_for(OWNER.name, spec.broker), image="i", replicas=1
    )
    (worker,) = deployment.spec.template.spec.containers  # type: ignore[union-attr]
    assert {var.name for var in worker.env} == OPERATOR_WORKER_ENV


def test_topology_defaults_follow_the_resource_name() -> None:
    spec = parse_spec({**SPEC, "broker": {"secretRef": {"name": "r", "key": "url"}}})
    topology = topology_for("u14", spec.broker)
    assert (topology.queue, topology.exchange, topology.dead_letter_queue) == (
        "u14",
        "u14",
        "u14.dlq",
    )
    assert topology.routing_keys == ("u14",)
    assert topology.queue_type == "quorum"


def test_an_impossible_topology_is_a_spec_error() -> None:
    broker = {"secretRef": {"name": "r", "key": "url"}, "queue": "q", "deadLetterQueue": "q"}
    spec = parse_spec({**SPEC, "broker": broker})
    with pytest.raises(SpecError, match="dead-letter queue must differ"):
        topology_for("x", spec.broker)


def test_keys_dropped_from_the_spec_are_stale_bindings() -> None:
    before = build_topology("matches", routing_keys=["matches", "matches.process", "u14"])
    after = build_topology("matches", routing_keys=["matches", "u15"])
    assert stale_bindings(after, topology_status(before, None)) == (
        Binding("matches", "matches", "matches.process"),
        Binding("matches", "matches", "u14"),
    )
    assert stale_bindings(after, topology_status(after, None)) == ()


def test_nothing_is_stale_before_a_declaration_completed() -> None:
    assert stale_bindings(build_topology("matches"), None) == ()
    assert stale_bindings(build_topology("matches"), {}) == ()


@pytest.mark.parametrize(
    "renamed", [{"queue": "matches.v2"}, {"exchange": "scores"}], ids=["queue", "exchange"]
)
def test_bindings_of_a_renamed_queue_or_exchange_stay(renamed: dict[str, str]) -> None:
    before = build_topology("matches", routing_keys=["matches", "matches.process"])
    after = build_topology(
        renamed.get("queue", "matches"), exchange=renamed.get("exchange", "matches")
    )
    assert stale_bindings(after, topology_status(before, None)) == ()
