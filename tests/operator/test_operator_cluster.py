"""The operator, running in-process, against the real control plane and a real RabbitMQ.

Worker pods never become ready, whether or not the session's node has started: their image
(`matchops:test`) is on no node and, with imagePullPolicy Never, is never pulled. readyReplicas
stays 0 and the tests never wait for pods. Polls are 1 s and scale-down delays a few seconds,
so each scenario takes seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from kopf.testing import KopfRunner
from matchops_devenv.access import ClusterAccess, KubectlError
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.namespace import CRD, Namespace, install_crd, sample, wait_for
from matchops_devenv.ports import free_port
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_operator.config import OperatorSettings
from matchops_operator.kube import Kube
from matchops_operator.main import build, kopf_settings
from matchops_operator.reconciler import Reconciler

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

WORKER_IMAGE = "matchops:test"


@dataclass(frozen=True)
class Pipeline(Namespace):
    """One test's namespace (`name`), broker vhost and the kubectl to look at them."""

    vhost: Vhost
    rabbitmq: RabbitMQ

    def secrets(self, url: str | None = None, management: bool = True) -> None:
        broker = {"url": url or self.vhost.url}
        if management:
            broker["management-url"] = self.rabbitmq.management_url
        self.secret("rabbitmq", broker)
        self.secret("postgres", {"dsn": "postgresql://matchops@postgres:5432/matches"})

    def messages(self, name: str, reason: str) -> list[str]:
        """The messages of the Events with `reason` about `name`, oldest first."""
        return [e["message"] for e in self.events(name) if e["reason"] == reason]

    def only_message(self, name: str, reason: str) -> str:
        """The message of the one Event with `reason` about `name`, once it is recorded."""
        wait_for(lambda: self.messages(name, reason), f"a {reason} Event about {name}")
        (message,) = self.messages(name, reason)
        return message

    def replicas(self, name: str) -> int:
        replicas: int = self.get("deployment", f"{name}-worker")["spec"]["replicas"]
        return replicas

    def queue(self, queue: str) -> dict[str, Any] | None:
        return self.rabbitmq.queue_info(self.vhost.name, queue)

    def bindings(self, queue: str) -> set[str]:
        """Routing keys binding `queue` to the exchange of the same name."""
        with self.rabbitmq.management() as api:
            vhost = quote(self.vhost.name, safe="")
            response = api.get(
                f"/bindings/{vhost}/e/{quote(queue, safe='')}/q/{quote(queue, safe='')}"
            )
        response.raise_for_status()
        return {binding["routing_key"] for binding in response.json()}

    def policy(self, name: str) -> dict[str, Any] | None:
        with self.rabbitmq.management() as api:
            response = api.get(f"/policies/{quote(self.vhost.name, safe='')}/{name}")
        if response.status_code == 404:
            return None
        found: dict[str, Any] = response.json()
        return found


def scaled_events(pipeline: Pipeline, name: str) -> list[str]:
    return [
        e["message"]
        for e in pipeline.events(name)
        if e["reason"] == "Scaled" and e["type"] == "Normal"
    ]


@pytest.fixture(scope="module")
def crd(cluster: ClusterAccess) -> None:
    install_crd(cluster, CRD, "matchingestions.matchops.dev")


@pytest.fixture
def pipeline(
    cluster: ClusterAccess, crd: None, namespace: str, vhost: Vhost, rabbitmq: RabbitMQ
) -> Pipeline:
    return Pipeline(cluster, namespace, vhost, rabbitmq)


@contextmanager
def running_operator(
    pipeline: Pipeline,
    worker_image: str = WORKER_IMAGE,
    backoff: tuple[float, float] = (0.5, 2.0),
    namespaces: tuple[str, ...] | None = None,
) -> Iterator[KopfRunner]:
    """The operator watching the test's namespace (or `namespaces`, names or patterns): 1 s
    polls, short backoff (first, most)."""
    namespaces = namespaces or (pipeline.name,)
    settings = OperatorSettings(
        namespaces=namespaces,
        poll_interval=1.0,
        worker_image=worker_image,
        # No registry is reached: a node that started for other tests does not pull the image.
        image_pull_policy="Never",
        liveness_port=None,
        standalone=True,
        retry_min_delay=backoff[0],
        retry_max_delay=backoff[1],
        kubeconfig=pipeline.cluster.kubeconfig,
    )
    args = ["run", "--standalone", *(f"--namespace={namespace}" for namespace in namespaces)]
    with KopfRunner(
        args, registry=build(settings), settings=kopf_settings(settings), timeout=60
    ) as runner:
        yield runner
    assert runner.exception is None


@pytest.fixture
def operator(pipeline: Pipeline) -> Iterator[KopfRunner]:
    with running_operator(pipeline) as runner:
        yield runner


def test_legacy_sample_creates_cronjob_deployment_and_queues(
    pipeline: Pipeline, operator: KopfRunner
) -> None:
    pipeline.secrets()
    pipeline.apply(sample("legacy-celery.yaml"))
    ready = pipeline.wait_condition("matches", "Ready", "True")
    assert ready["reason"] == "Ready"

    mi = pipeline.ingestion("matches")
    assert mi["status"]["observedGeneration"] == mi["metadata"]["generation"]
    assert "Reconciling" not in {c["type"] for c in mi["status"]["conditions"]}
    assert "Stalled" not in {c["type"] for c in mi["status"]["conditions"]}
    owner = {"kind": "MatchIngestion", "name": "matches", "uid": mi["metadata"]["uid"]}

    cronjob = pipeline.get("cronjob", "matches-scraper")
    assert cronjob["spec"]["schedule"] == "0 6 * * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 3600
    assert {k: cronjob["metadata"]["ownerReferences"][0][k] for k in owner} == owner
    (scraper,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var for var in scraper["env"]}
    assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "rabbitmq",
        "key": "url",
    }
    assert "value" not in env["CELERY_BROKER_URL"]
    assert env["MATCHOPS_EXCHANGE"]["value"] == "matches"

    deployment = pipeline.get("deployment", "matches-worker")
    assert deployment["spec"]["replicas"] == 0
    assert {k: deployment["metadata"]["ownerReferences"][0][k] for k in owner} == owner
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    assert worker["image"] == WORKER_IMAGE
    assert worker["imagePullPolicy"] == "Never"
    managed = pipeline.get("deployment", "matches-worker", "--show-managed-fields")
    managers = {entry["manager"] for entry in managed["metadata"]["managedFields"]}
    assert "matchops-operator" in managers

    main = pipeline.queue("matches")
    assert main is not None
    assert main["durable"] is True
    assert main["arguments"] == {}  # what Celery declares: no 406 for the legacy producer
    assert main["type"] == "classic"
    retry = pipeline.queue("matches.retry.1m")
    assert retry is not None
    assert retry["arguments"] == {
        "x-message-ttl": 60000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "matches",
    }
    assert pipeline.queue("matches.dlq") is not None
    policy = pipeline.policy("matchops.matches")
    assert policy is not None
    assert policy["definition"] == {
        "dead-letter-exchange": "",
        "dead-letter-routing-key": "matches.dlq",
    }
    assert pipeline.bindings("matches") == {"matches", "matches.process"}

    status = pipeline.ingestion("matches")["status"]
    assert status["topology"]["retryQueues"] == [
        "matches.retry.10s",
        "matches.retry.1m",
        "matches.retry.5m",
    ]
    assert status["backlog"]["ready"] == 0
    assert status["workers"]["summary"] == "0/0"


def test_an_unchanged_resource_writes_nothing(pipeline: Pipeline, operator: KopfRunner) -> None:
    pipeline.secrets()
    pipeline.apply(sample("minimal.yaml"))
    pipeline.wait_condition("u14-northeast", "Ready", "True")
    time.sleep(2)  # let the first polls settle what they record

    def versions() -> dict[str, str]:
        return {
            kind: pipeline.get(kind, name)["metadata"]["resourceVersion"]
            for kind, name in [
                ("matchingestion", "u14-northeast"),
                ("cronjob", "u14-northeast-scraper"),
                ("deployment", "u14-northeast-worker"),
            ]
        }

    before, events_before = versions(), len(pipeline.events("u14-northeast"))
    time.sleep(5)  # five polls, each reading the queue and re-applying every child
    assert versions() == before
    assert len(pipeline.events("u14-northeast")) == events_before


def test_spec_changes_reach_the_children(pipeline: Pipeline, operator: KopfRunner) -> None:
    pipeline.secrets()
    pipeline.apply(sample("minimal.yaml", broker__routingKeys=["u14-northeast", "u14.scores"]))
    pipeline.wait_condition("u14-northeast", "Ready", "True")
    assert pipeline.bindings("u14-northeast") == {"u14-northeast", "u14.scores"}
    with pipeline.vhost.channel() as channel:  # someone else's binding
        channel.queue_bind("u14-northeast", "u14-northeast", "by.hand")
    pipeline.apply(
        sample(
            "minimal.yaml",
            scraper__schedule="30 7 * * 1-5",
            scraper__suspend=True,
            broker__routingKeys=["u14-northeast", "u14.results"],
            workers__prefetch=400,
            workers__minReplicas=2,
        )
    )

    def followed() -> bool:
        cronjob = pipeline.get("cronjob", "u14-northeast-scraper")["spec"]
        deployment = pipeline.get("deployment", "u14-northeast-worker")["spec"]
        (worker,) = deployment["template"]["spec"]["containers"]
        env = {var["name"]: var.get("value") for var in worker["env"]}
        return (
            cronjob["schedule"] == "30 7 * * 1-5"
            and cronjob["suspend"] is True
            and env["MATCHOPS_PREFETCH"] == "400"
            and deployment["replicas"] == 2
        )

    wait_for(followed, "the CronJob and Deployment to follow the spec")
    # The dropped key is unbound, the new one bound; a binding the operator did not make stays.
    wait_for(
        lambda: pipeline.bindings("u14-northeast") == {"u14-northeast", "u14.results", "by.hand"},
        "the bindings to follow the spec",
    )
    topology = pipeline.ingestion("u14-northeast")["status"]["topology"]
    assert topology["routingKeys"] == ["u14-northeast", "u14.results"]
    mi = pipeline.ingestion("u14-northeast")
    wait_for(
        lambda: (
            pipeline.ingestion("u14-northeast")["status"]["observedGeneration"]
            == mi["metadata"]["generation"]
        ),
        "observedGeneration to catch up",
    )
    scraper = pipeline.condition("u14-northeast", "ScraperReady")
    assert scraper is not None
    assert scraper["reason"] == "ScraperSuspended"


def test_removing_the_scraper_removes_its_cronjob(pipeline: Pipeline, operator: KopfRunner) -> None:
    pipeline.secrets()
    manifest = sample("minimal.yaml")
    pipeline.apply(manifest)
    pipeline.wait_condition("u14-northeast", "Ready", "True")
    assert "scraper" in pipeline.ingestion("u14-northeast")["status"]
    del manifest["spec"]["scraper"]
    pipeline.kubectl(
        "replace",
        "-f",
        "-",
        input=yaml.safe_dump(
            {**manifest, "metadata": {**manifest["metadata"], "namespace": pipeline.name}}
        ),
    )
    pipeline.wait_condition("u14-northeast", "ScraperReady", "True", "NoScraper")
    wait_for(
        lambda: (
            not pipeline.kubectl(
                "get", "cronjob", "u14-northeast-scraper", "--ignore-not-found", "-o", "name"
            ).strip()
        ),
        "the CronJob to be deleted",
    )
    wait_for(
        lambda: "scraper" not in pipeline.ingestion("u14-northeast")["status"],
        "status.scraper to go",
    )


def test_a_restarted_operator_goes_on_where_it_stopped(pipeline: Pipeline) -> None:
    pipeline.secrets()
    pipeline.apply(
        sample(
            "legacy-celery.yaml",
            workers__maxReplicas=3,
            workers__targetBacklogPerReplica=100,
            workers__scaleDownDelaySeconds=3600,
        )
    )
    with running_operator(pipeline):
        pipeline.wait_condition("matches", "TopologyReady", "True")
        pipeline.vhost.publish("matches", "matches", [b"{}"] * 500)
        wait_for(lambda: pipeline.replicas("matches") == 3, "three workers")
        pipeline.vhost.take("matches")
        wait_for(
            lambda: "overProvisionedSince" in pipeline.ingestion("matches")["status"]["workers"],
            "the scale-down delay to start",
        )
    before = pipeline.ingestion("matches")["status"]
    scaled_before = scaled_events(pipeline, "matches")
    with running_operator(pipeline):
        time.sleep(4)  # resume, then several polls
        after = pipeline.ingestion("matches")["status"]
    assert pipeline.replicas("matches") == 3  # not back to minReplicas 0
    assert after["workers"]["overProvisionedSince"] == before["workers"]["overProvisionedSince"]
    assert after["workers"]["lastScaleTime"] == before["workers"]["lastScaleTime"]
    assert scaled_events(pipeline, "matches") == scaled_before


def test_backlog_scales_workers_up_and_down_with_events(
    pipeline: Pipeline, operator: KopfRunner
) -> None:
    pipeline.secrets()
    pipeline.apply(
        sample(
            "legacy-celery.yaml",
            workers__maxReplicas=4,
            workers__targetBacklogPerReplica=100,
            workers__scaleDownDelaySeconds=3,
        )
    )
    pipeline.wait_condition("matches", "Ready", "True")
    pipeline.vhost.publish("matches", "matches.process", [b'{"n": %d}' % i for i in range(1000)])

    wait_for(lambda: pipeline.replicas("matches") == 4, "workers scaled up to maxReplicas 4")
    # A poll may catch the publisher half-way and scale up in two steps.
    ups = wait_for(
        lambda: [m for m in scaled_events(pipeline, "matches") if m.split(":")[0].endswith("4")],
        "a Scaled Event up to 4",
    )
    up = re.fullmatch(
        r"Scaled workers [0-3] → 4: backlog (\d+) \(ready (\d+), unacked (\d+)\), "
        r"throughput not measured yet, "
        r"target 100 per replica( \(capped at maxReplicas 4\))?",
        ups[0],
    )
    assert up is not None, ups[0]
    backlog, ready, unacked = (int(figure) for figure in up.groups()[:3])
    assert backlog == ready + unacked
    workers = pipeline.ingestion("matches")["status"]["workers"]
    assert workers["desiredReplicas"] == 4
    assert workers["lastScaleReason"] == ups[0].split(": ", 1)[1]
    # No node runs the workers' image: they are on their way, not ready.
    pipeline.wait_condition("matches", "Reconciling", "True", "WorkersProgressing")
    backlog_status = wait_for(
        lambda: (
            pipeline.ingestion("matches")["status"]["backlog"]["ready"] == 1000
            and pipeline.ingestion("matches")["status"]["backlog"]
        ),
        "the whole backlog in status",
    )
    assert backlog_status["total"] == 1000 + backlog_status["unacked"]

    drained = len(pipeline.vhost.take("matches"))
    assert drained == 1000
    started = time.monotonic()
    wait_for(lambda: pipeline.replicas("matches") == 3, "a first step down", timeout=30)
    assert time.monotonic() - started >= 2.0  # the 3 s delay, less one poll of slack
    wait_for(lambda: pipeline.replicas("matches") == 0, "workers scaled to zero", timeout=30)
    steps = scaled_events(pipeline, "matches")
    steps = steps[[m.split(":")[0] for m in steps].index("Scaled workers 4 → 3") :]
    assert [m.split(":")[0] for m in steps] == [
        "Scaled workers 4 → 3",
        "Scaled workers 3 → 2",
        "Scaled workers 2 → 1",
        "Scaled workers 1 → 0",
    ]
    assert all("scale-down delay 3s" in m for m in steps)
    pipeline.wait_condition("matches", "Ready", "True")


def test_missing_secret_then_recovery(pipeline: Pipeline, operator: KopfRunner) -> None:
    pipeline.apply(sample("minimal.yaml"))
    stalled = pipeline.wait_condition("u14-northeast", "Stalled", "True", "SecretNotFound")
    assert stalled["message"] == (
        f"Secret {pipeline.name}/rabbitmq not found; create it with key 'url' holding "
        "the broker's AMQP URL"
    )
    ready = pipeline.condition("u14-northeast", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    mi = pipeline.ingestion("u14-northeast")
    assert mi["status"]["observedGeneration"] == mi["metadata"]["generation"]
    warnings = [e for e in pipeline.events("u14-northeast") if e["type"] == "Warning"]
    # Both Secrets are missing: the broker's (TopologyReady) and the database's (WorkersReady).
    assert [(e["reason"], e["message"].split()[1]) for e in warnings] == [
        ("SecretNotFound", f"{pipeline.name}/rabbitmq"),
        ("SecretNotFound", f"{pipeline.name}/postgres"),
    ]
    workers = pipeline.condition("u14-northeast", "WorkersReady")
    assert workers is not None
    assert workers["reason"] == "SecretNotFound"
    # The scraper CronJob does not need the Secret's value: it is there already.
    pipeline.get("cronjob", "u14-northeast-scraper")

    time.sleep(3)  # retries with backoff: the condition stays, no new Events
    assert len([e for e in pipeline.events("u14-northeast") if e["type"] == "Warning"]) == 2

    pipeline.secrets()
    pipeline.wait_condition("u14-northeast", "Ready", "True", timeout=30)
    assert pipeline.condition("u14-northeast", "Stalled") is None

    def recovery() -> list[str]:
        """The Events since the last Warning, once they end with Ready (recorded after status)."""
        events = pipeline.events("u14-northeast")
        last_warning = max(i for i, e in enumerate(events) if e["type"] == "Warning")
        reasons = [e["reason"] for e in events[last_warning + 1 :]]
        return reasons if reasons and reasons[-1] == "Ready" else []

    reasons = wait_for(recovery, "the Ready Event")
    assert reasons.count("Ready") == 1
    assert "TopologyDeclared" in reasons[:-1]  # the broker part recovered, then the whole


def test_refused_credentials_then_recovery(pipeline: Pipeline, operator: KopfRunner) -> None:
    wrong = pipeline.vhost.url.replace(
        f":{quote(pipeline.rabbitmq.password, safe='')}@", ":not-the-password@"
    )
    pipeline.secrets(url=wrong, management=False)
    pipeline.apply(sample("minimal.yaml"))
    stalled = pipeline.wait_condition(
        "u14-northeast", "Stalled", "True", "BrokerAuthenticationFailed"
    )
    assert f"Secret {pipeline.name}/rabbitmq key 'url'" in stalled["message"]
    assert "not-the-password" not in json.dumps(pipeline.ingestion("u14-northeast"))
    pipeline.kubectl("delete", "secret", "rabbitmq")
    pipeline.kubectl(
        "create", "secret", "generic", "rabbitmq", f"--from-literal=url={pipeline.vhost.url}"
    )
    pipeline.wait_condition("u14-northeast", "Ready", "True", timeout=30)


def test_a_user_without_permission_is_a_condition_until_granted(
    pipeline: Pipeline, operator: KopfRunner, vhost_user: str
) -> None:
    rabbitmq, vhost = pipeline.rabbitmq, pipeline.vhost.name
    # May use the vhost, read and write, but not declare anything (configure '^$').
    url = rabbitmq.set_user(vhost_user, "secret", vhost, ("^$", ".*", ".*"))
    pipeline.secrets(url=url, management=False)
    pipeline.apply(sample("minimal.yaml"))
    stalled = pipeline.wait_condition("u14-northeast", "Stalled", "True", "BrokerPermissionDenied")
    assert stalled["message"].startswith(
        f"RabbitMQ user {vhost_user} may not declare exchange u14-northeast in vhost {vhost} "
        "(ACCESS_REFUSED"
    )
    assert f"rabbitmqctl set_permissions -p {vhost} {vhost_user}" in stalled["message"]
    topology = pipeline.condition("u14-northeast", "TopologyReady")
    assert topology is not None
    assert (topology["status"], topology["reason"]) == ("False", "BrokerPermissionDenied")
    warnings = [e for e in pipeline.events("u14-northeast") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["BrokerPermissionDenied"]
    assert warnings[0]["message"] == stalled["message"]

    rabbitmq.set_user(vhost_user, "secret", vhost)  # configure, write and read on everything
    pipeline.wait_condition("u14-northeast", "Ready", "True", timeout=30)
    assert pipeline.condition("u14-northeast", "Stalled") is None
    assert pipeline.queue("u14-northeast") is not None


def test_unreachable_broker_is_retried_until_it_answers(
    pipeline: Pipeline, operator: KopfRunner
) -> None:
    closed = f"amqp://matchops:secret@127.0.0.1:{free_port()}/%2F"
    pipeline.secrets(url=closed, management=False)
    pipeline.apply(sample("minimal.yaml"))
    reconciling = pipeline.wait_condition(
        "u14-northeast", "Reconciling", "True", "BrokerUnreachable"
    )
    assert "cannot connect to RabbitMQ at 127.0.0.1" in reconciling["message"]
    assert pipeline.condition("u14-northeast", "Stalled") is None  # it may pass on its own
    ready = pipeline.condition("u14-northeast", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "BrokerUnreachable")
    warnings = [e["reason"] for e in pipeline.events("u14-northeast") if e["type"] == "Warning"]
    assert warnings == ["BrokerUnreachable"]
    pipeline.kubectl("delete", "secret", "rabbitmq")
    pipeline.kubectl(
        "create", "secret", "generic", "rabbitmq", f"--from-literal=url={pipeline.vhost.url}"
    )
    pipeline.wait_condition("u14-northeast", "Ready", "True", timeout=30)
    assert pipeline.condition("u14-northeast", "Reconciling") is None


@contextmanager
def counting_listener() -> Iterator[tuple[int, list[float]]]:
    """A local port that accepts each connection and closes it at once; when each came."""
    accepted: list[float] = []
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.1)

        def serve() -> None:
            while not stop.is_set():
                try:
                    connection, _ = server.accept()
                except TimeoutError:
                    continue
                accepted.append(time.monotonic())
                connection.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1], accepted
        finally:
            stop.set()
            thread.join()


def test_a_failing_broker_is_tried_ever_less_often(pipeline: Pipeline) -> None:
    backoff = OperatorSettings(retry_min_delay=1.0, retry_max_delay=8.0).backoff
    with counting_listener() as (port, attempts):
        pipeline.secrets(url=f"amqp://matchops:secret@127.0.0.1:{port}/%2F", management=False)
        pipeline.apply(sample("minimal.yaml"))
        with running_operator(pipeline, backoff=(1.0, 8.0)):
            wait_for(lambda: len(attempts) >= 5, "five connection attempts", timeout=60)
            reconciling = pipeline.condition("u14-northeast", "Reconciling")
    gaps = [round(later - earlier, 2) for earlier, later in itertools.pairwise(attempts[:5])]
    # Polls (every second) and kopf's retries both wait out the backoff: 1, 2, 4, 8 s.
    assert all(gap >= 0.9 * backoff(n) for n, gap in enumerate(gaps, start=1)), gaps
    assert gaps[-1] > 2 * gaps[0], gaps
    assert reconciling is not None
    assert reconciling["reason"] == "BrokerUnreachable"


def test_a_missing_database_secret_holds_the_workers_not_the_backlog(
    pipeline: Pipeline, operator: KopfRunner
) -> None:
    pipeline.secret("rabbitmq", {"url": pipeline.vhost.url})
    pipeline.apply(sample("minimal.yaml"))
    workers = pipeline.wait_condition("u14-northeast", "WorkersReady", "False", "SecretNotFound")
    assert workers["message"].startswith(f"Secret {pipeline.name}/postgres not found")
    pipeline.vhost.publish("u14-northeast", "u14-northeast", [b"{}"] * 7)
    wait_for(
        lambda: pipeline.ingestion("u14-northeast")["status"]["backlog"]["ready"] == 7,
        "the backlog in status while the workers wait for their Secret",
    )
    topology = pipeline.condition("u14-northeast", "TopologyReady")
    assert topology is not None
    assert topology["status"] == "True"

    pipeline.secret("postgres", {"dsn": "postgresql://matchops@postgres:5432/matches"})
    wait_for(
        lambda: pipeline.kubectl(
            "get", "deployment", "u14-northeast-worker", "--ignore-not-found", "-o", "name"
        ).strip(),
        "the worker Deployment",
    )
    assert pipeline.replicas("u14-northeast") == 1  # a worker for the waiting messages
    pipeline.wait_condition("u14-northeast", "WorkersReady", "False", "WorkersProgressing")


def test_no_worker_image_anywhere_is_reported(pipeline: Pipeline) -> None:
    pipeline.secrets()
    pipeline.apply(sample("minimal.yaml"))
    with running_operator(pipeline, worker_image=""):
        stalled = pipeline.wait_condition("u14-northeast", "Stalled", "True", "NoWorkerImage")
        assert "spec.workers.image is empty" in stalled["message"]
        workers = pipeline.condition("u14-northeast", "WorkersReady")
        assert workers is not None
        assert (workers["status"], workers["reason"]) == ("False", "NoWorkerImage")
        pipeline.get("cronjob", "u14-northeast-scraper")  # the rest of the pipeline is there
        pipeline.apply(sample("minimal.yaml", workers__image=WORKER_IMAGE))
        pipeline.wait_condition("u14-northeast", "Ready", "True")


def test_quorum_queue_on_a_legacy_classic_queue_is_a_conflict_not_a_crash(
    pipeline: Pipeline, operator: KopfRunner
) -> None:
    # The legacy producer declared the queue plainly, before the operator arrived.
    with pipeline.vhost.channel() as channel:
        channel.queue_declare("matches", durable=True)
    pipeline.secrets()
    pipeline.apply(sample("legacy-celery.yaml", broker__queueType="quorum"))
    stalled = pipeline.wait_condition("matches", "Stalled", "True", "QueueConflict")
    assert "queue matches already exists with other settings" in stalled["message"]
    assert "PRECONDITION_FAILED" in stalled["message"]
    assert "x-queue-type" in stalled["message"]
    topology = pipeline.condition("matches", "TopologyReady")
    assert topology is not None
    assert topology["status"] == "False"
    # The backlog is still read, so scaling keeps working (the producer binds the queue itself;
    # the declaration stopped at the conflict, before the bindings).
    pipeline.vhost.publish("", "matches", [b"{}"] * 3)
    wait_for(lambda: pipeline.replicas("matches") == 1, "a worker for the waiting messages")
    queue = pipeline.queue("matches")
    assert queue is not None
    assert queue["arguments"] == {}  # nothing was deleted or re-declared

    pipeline.apply(sample("legacy-celery.yaml"))  # queueType: classic, as it really is
    pipeline.wait_condition("matches", "TopologyReady", "True")
    assert pipeline.condition("matches", "Stalled") is None


def test_topology_and_children_deleted_by_hand_are_repaired(
    pipeline: Pipeline, operator: KopfRunner
) -> None:
    pipeline.secrets()
    pipeline.apply(sample("legacy-celery.yaml"))
    pipeline.wait_condition("matches", "Ready", "True")
    with pipeline.vhost.channel() as channel:
        channel.queue_delete("matches.dlq")
        channel.queue_delete("matches.retry.10s")
    pipeline.kubectl("delete", "deployment", "matches-worker")
    wait_for(lambda: pipeline.queue("matches.dlq"), "the dead-letter queue to be re-declared")
    wait_for(lambda: pipeline.queue("matches.retry.10s"), "the retry queue to be re-declared")
    wait_for(
        lambda: (
            pipeline.cluster.kubectl(
                "-n", pipeline.name, "get", "deployment", "matches-worker", check=False
            ).returncode
            == 0
        ),
        "the Deployment to be re-created",
    )


@pytest.mark.parametrize(
    ("policy", "kept"), [("Retain", True), ("Delete", False)], ids=["retain", "delete"]
)
def test_deletion_policy_decides_the_queues_and_children_are_collected(
    pipeline: Pipeline, operator: KopfRunner, policy: str, kept: bool
) -> None:
    pipeline.secrets()
    pipeline.apply(sample("legacy-celery.yaml", broker__deletionPolicy=policy))
    pipeline.wait_condition("matches", "Ready", "True")
    pipeline.vhost.publish("matches", "matches", [b"{}"] * 5)
    pipeline.kubectl("delete", "matchingestion", "matches", "--wait=true", "--timeout=60s")

    queues = ["matches", "matches.retry.10s", "matches.retry.1m", "matches.retry.5m", "matches.dlq"]
    assert [pipeline.queue(q) is not None for q in queues] == [kept] * len(queues)
    assert (pipeline.policy("matchops.matches") is not None) is kept
    if kept:
        assert pipeline.vhost.depth("matches") == 5

    def collected() -> bool:
        for kind, name in [("cronjob", "matches-scraper"), ("deployment", "matches-worker")]:
            found = pipeline.cluster.kubectl(
                "-n", pipeline.name, "get", kind, name, "--ignore-not-found", "-o", "name"
            ).stdout.strip()
            if found:
                return False
        return True

    wait_for(collected, "the garbage collector to remove the CronJob and the Deployment")


def test_queues_shared_with_another_pipeline_go_only_with_the_last_of_them(
    pipeline: Pipeline, operator: KopfRunner
) -> None:
    pipeline.secrets()
    first = sample("legacy-celery.yaml", broker__deletionPolicy="Delete")
    # The same pipeline applied again under another name: the same queues on the same broker.
    copy = sample("legacy-celery.yaml", broker__deletionPolicy="Delete")
    copy["metadata"]["name"] = "matches-copy"
    pipeline.apply(first)
    pipeline.wait_condition("matches", "Ready", "True")
    pipeline.apply(copy)
    pipeline.wait_condition("matches-copy", "Ready", "True")
    # The one applied second is told: two pipelines would each size workers to one backlog.

    warning = pipeline.only_message("matches-copy", "QueueShared")
    assert warning.startswith("queue matches is also used by MatchIngestion matches:"), warning
    assert pipeline.messages("matches", "QueueShared") == []
    pipeline.vhost.publish("matches", "matches", [b"{}"] * 5)

    pipeline.kubectl("delete", "matchingestion", "matches", "--wait=true", "--timeout=60s")
    assert pipeline.vhost.depth("matches") == 5
    assert pipeline.queue("matches.dlq") is not None
    assert pipeline.policy("matchops.matches") is not None
    kept = pipeline.messages("matches", "QueuesKept")
    assert len(kept) == 1, kept
    assert "kept on the broker: MatchIngestion matches-copy uses them too" in kept[0]

    pipeline.kubectl("delete", "matchingestion", "matches-copy", "--wait=true", "--timeout=60s")
    assert pipeline.queue("matches") is None
    assert pipeline.queue("matches.dlq") is None
    assert pipeline.policy("matchops.matches") is None


def deletion_summaries(
    body: dict[str, Any], served: tuple[str, ...], kubeconfig: Path, times: int = 1
) -> list[str]:
    """Call the reconciler's deletion `times`, as kopf would for an operator that serves
    `served` and authenticates with `kubeconfig`; no operator runs."""

    async def delete() -> list[str]:
        settings = OperatorSettings(namespaces=served, kubeconfig=kubeconfig)
        reconciler = Reconciler(Kube.connect(kubeconfig), settings)
        try:
            return [(await reconciler.delete(body)).summary for _ in range(times)]
        finally:
            await reconciler.close()

    return asyncio.run(delete())


@pytest.fixture
def staging(pipeline: Pipeline) -> Iterator[Pipeline]:
    """A second namespace, `<test's namespace>-staging`, on the same broker virtual host; both
    namespaces have their Secrets."""
    other = Pipeline(
        pipeline.cluster, f"{pipeline.name}-staging", pipeline.vhost, pipeline.rabbitmq
    )
    pipeline.cluster.kubectl("create", "namespace", other.name)
    for space in (pipeline, other):
        space.secrets()
    yield other
    pipeline.cluster.kubectl(
        "delete", "namespace", other.name, "--wait=false", "--ignore-not-found", check=False
    )


def test_the_same_pipeline_in_another_namespace_keeps_the_queues_it_shares(
    pipeline: Pipeline, staging: Pipeline
) -> None:
    # The queue is named after the resource by default: the same manifest applied in two
    # namespaces, against one broker, makes two pipelines on one queue.
    manifest = sample("legacy-celery.yaml", broker__deletionPolicy="Delete")
    # A pattern serves both namespaces; the operator may then list MatchIngestions in all.
    with running_operator(pipeline, namespaces=(f"{pipeline.name}*",)):
        staging.apply(manifest)
        staging.wait_condition("matches", "Ready", "True")
        pipeline.apply(manifest)
        pipeline.wait_condition("matches", "Ready", "True")
        warning = pipeline.only_message("matches", "QueueShared")
        expected = f"queue matches is also used by MatchIngestion {staging.name}/matches:"
        assert warning.startswith(expected), warning
        pipeline.vhost.publish("matches", "matches", [b"{}"] * 5)

        pipeline.kubectl("delete", "matchingestion", "matches", "--wait=true", "--timeout=60s")
        assert pipeline.vhost.depth("matches") == 5
        kept = pipeline.messages("matches", "QueuesKept")
        assert len(kept) == 1, kept
        assert f"MatchIngestion {staging.name}/matches uses them too" in kept[0], kept

        staging.kubectl("delete", "matchingestion", "matches", "--wait=true", "--timeout=60s")
        assert pipeline.queue("matches") is None
        assert pipeline.queue("matches.dlq") is None


def test_an_operator_serving_listed_namespaces_looks_only_in_them(
    pipeline: Pipeline, staging: Pipeline
) -> None:
    # No operator runs: the reconciler's deletion is called as kopf would call it, first for
    # an operator that serves both namespaces by name, then for one that serves the test's
    # namespace alone and so does not look in the other.
    manifest = sample("legacy-celery.yaml", broker__deletionPolicy="Delete")
    for space in (pipeline, staging):
        space.apply(manifest)
    body, kubeconfig = pipeline.ingestion("matches"), pipeline.cluster.kubeconfig
    (both,) = deletion_summaries(body, (pipeline.name, staging.name), kubeconfig)
    assert f"MatchIngestion {staging.name}/matches uses them too" in both, both
    (alone,) = deletion_summaries(body, (pipeline.name,), kubeconfig)
    assert alone.startswith("deletionPolicy Delete: deleted queues matches, "), alone


ALLOWED_IN_ONE_NAMESPACE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: operator}
rules:
- {apiGroups: [matchops.dev], resources: [matchingestions], verbs: [get, list]}
- {apiGroups: [""], resources: [secrets], verbs: [get]}
- {apiGroups: [""], resources: [events], verbs: [create]}
"""


def test_an_operator_that_may_not_list_every_namespace_looks_in_the_pipelines_own(
    pipeline: Pipeline, staging: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Served by pattern, which lets the operator look in every namespace, but allowed to list
    # MatchIngestions in the test's namespace only: the deletion goes on with what it may see.
    manifest = sample("legacy-celery.yaml", broker__deletionPolicy="Delete")
    for space in (pipeline, staging):
        space.apply(manifest)
    pipeline.kubectl("create", "serviceaccount", "operator")
    pipeline.kubectl("apply", "-f", "-", input=ALLOWED_IN_ONE_NAMESPACE)
    pipeline.kubectl(
        "create",
        "rolebinding",
        "operator",
        "--role=operator",
        f"--serviceaccount={pipeline.name}:operator",
    )
    kubeconfig = pipeline.cluster.service_account_kubeconfig(
        pipeline.name, "operator", tmp_path / "operator.kubeconfig"
    )
    body = pipeline.ingestion("matches")
    with caplog.at_level(logging.WARNING, logger="matchops_operator.reconciler"):
        (summary,) = deletion_summaries(body, (f"{pipeline.name}*",), kubeconfig)
    assert summary.startswith("deletionPolicy Delete: deleted queues matches, "), summary
    looked = [
        r.getMessage() for r in caplog.records if "other users of the queues" in r.getMessage()
    ]
    assert len(looked) == 1, looked
    assert looked[0].startswith(f"looking for other users of the queues in {pipeline.name} only:")
    assert "may not list MatchIngestions in every namespace" in looked[0], looked


def test_a_deletion_run_again_tells_its_outcome_once(pipeline: Pipeline) -> None:
    # kopf runs the deletion handler again when a poll ends after it; no operator runs here,
    # the reconciler is called twice, as kopf would.
    pipeline.secrets()
    for name in ("matches", "matches-copy"):
        manifest = sample("legacy-celery.yaml", broker__deletionPolicy="Delete")
        manifest["metadata"]["name"] = name
        pipeline.apply(manifest)
    body = pipeline.ingestion("matches")
    first, second = deletion_summaries(body, (pipeline.name,), pipeline.cluster.kubeconfig, 2)
    assert first == second
    assert "kept on the broker: MatchIngestion matches-copy uses them too" in first, first
    kept = pipeline.messages("matches", "QueuesKept")
    assert kept == [first]


def test_a_poll_in_progress_does_not_hold_up_deletion(
    pipeline: Pipeline, operator: KopfRunner
) -> None:
    # A management API that accepts connections and never answers: every poll waits out the
    # operator's 10 s timeout, so a deletion almost always arrives while a poll is running.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        management = f"http://matchops:secret@127.0.0.1:{silent.getsockname()[1]}"
        pipeline.kubectl(
            "create",
            "secret",
            "generic",
            "rabbitmq",
            f"--from-literal=url={pipeline.vhost.url}",
            f"--from-literal=management-url={management}",
        )
        pipeline.kubectl(
            "create", "secret", "generic", "postgres", "--from-literal=dsn=postgresql://db/x"
        )
        pipeline.apply(sample("legacy-celery.yaml"))
        pipeline.wait_condition(
            "matches", "Reconciling", "True", "ManagementAPIUnreachable", timeout=60
        )
        started = time.monotonic()
        pipeline.kubectl("delete", "matchingestion", "matches", "--wait=true", "--timeout=50s")
        assert time.monotonic() - started < 25


def test_kubectl_get_and_describe_tell_the_story(pipeline: Pipeline, operator: KopfRunner) -> None:
    pipeline.secrets()
    pipeline.apply(
        sample("legacy-celery.yaml", workers__targetBacklogPerReplica=100, workers__maxReplicas=3)
    )
    pipeline.wait_condition("matches", "Ready", "True")
    pipeline.vhost.publish("matches", "matches", [b"{}"] * 250)
    wait_for(lambda: pipeline.replicas("matches") == 3, "three workers")
    with pipeline.vhost.channel() as channel:
        # A consumer holding 50 messages unacknowledged: BACKLOG is all 250 not yet stored.
        channel.basic_qos(prefetch_count=50)
        channel.basic_consume("matches", lambda *_: None)
        channel.connection.process_data_events(time_limit=1)
        wait_for(
            lambda: (
                {
                    key: pipeline.ingestion("matches")["status"]["backlog"].get(key)
                    for key in ("total", "ready", "unacked")
                }
                == {"total": 250, "ready": 200, "unacked": 50}
            ),
            "the backlog in status",
        )
        header, row = pipeline.kubectl("get", "mi").splitlines()
    names = ["NAME", "READY", "BACKLOG", "DLQ", "WORKERS", "LAST SCRAPE", "AGE"]
    starts = [header.index(name) for name in names]
    assert starts == sorted(starts)
    cells = {
        name: row[start:end].strip()
        for name, start, end in zip(names, starts, [*starts[1:], None], strict=True)
    }
    assert cells == {
        "NAME": "matches",
        "READY": "False",
        "BACKLOG": "250",
        "DLQ": "0",
        "WORKERS": "0/3",
        "LAST SCRAPE": "",  # no scraper run yet
        "AGE": cells["AGE"],
    }
    assert re.fullmatch(r"\d+s", cells["AGE"])

    wide = pipeline.kubectl("get", "mi", "-o", "wide").splitlines()
    assert wide[0].split()[-2:] == ["QUEUE", "REASON"]
    assert wide[1].split()[-2:] == ["matches", "WorkersProgressing"]
    # The category lists MatchIngestions alongside anything else matchops adds.
    assert pipeline.kubectl("get", "matchops").splitlines()[1].split()[:2] == ["matches", "False"]

    described = pipeline.kubectl("describe", "mi", "matches")
    assert "Conditions:" in described
    for line in [
        "Type:                  Ready",
        "Reason:                WorkersProgressing",
        "Type:                  TopologyReady",
        "Reason:                TopologyDeclared",
    ]:
        assert " ".join(line.split()) in " ".join(described.split())
    events = described.split("Events:")[1]
    # A poll may catch the publisher half-way: up to 3 in one or two steps.
    scaled = r"Scaled workers [0-2] → 3: backlog \d+ \(ready \d+, unacked \d+\)"
    assert re.search(scaled, " ".join(events.split()))
    assert "matchops-operator" in events
    assert "TopologyDeclared" in events


def test_explain_teaches_the_fields(pipeline: Pipeline) -> None:
    def explained() -> str:
        # The published OpenAPI document follows a new CRD within seconds.
        return " ".join(
            pipeline.cluster.kubectl(
                "explain", "mi.spec.workers.targetDrainSeconds", check=False
            ).stdout.split()
        )

    text = wait_for(explained, "kubectl explain to know the field")
    assert "Aim to clear the backlog within this many seconds" in text


INVALID = [
    ({"workers__minReplicas": 5, "workers__maxReplicas": 2}, "minReplicas must not exceed"),
    ({"broker__queueType": "stream"}, 'supported values: "quorum", "classic"'),
    ({"broker__retry": {"delays": ["10s", "5"]}}, "spec.broker.retry.delays[1]"),
    ({"broker__retry": {"delays": ["5m", "1m"]}}, "retry delays must not decrease"),
    ({"broker__queue": "q", "broker__deadLetterQueue": "q"}, "deadLetterQueue must differ"),
    ({"broker__queue": "amq.matches"}, "reserved by RabbitMQ"),
    ({"workers__batchSize": 500, "workers__prefetch": 100}, "batchSize must not exceed"),
    ({"scraper__schedule": "every morning"}, "spec.scraper.schedule"),
    ({"broker__deletionPolicy": "Purge"}, 'supported values: "Retain", "Delete"'),
    ({"workers__batchWait": "fast"}, "spec.workers.batchWait"),
]


@pytest.mark.parametrize(("changes", "message"), INVALID)
def test_invalid_specs_are_refused_by_the_api_server(
    pipeline: Pipeline, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(KubectlError) as refused:
        pipeline.apply(sample("minimal.yaml", **changes))
    assert message in refused.value.stderr


def test_a_name_too_long_for_the_cronjob_is_refused(pipeline: Pipeline) -> None:
    manifest = sample("minimal.yaml")
    manifest["metadata"]["name"] = "x" * 45
    with pytest.raises(KubectlError) as refused:
        pipeline.apply(manifest)
    assert "metadata.name must be at most 44 characters" in refused.value.stderr
