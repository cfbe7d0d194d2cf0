"""The operator SIGKILLed mid-reconcile, and two operator replicas side by side.

The operator runs as a real process against the test control plane and a real RabbitMQ. Its
worker image is on no node (pull policy Never): worker pods never run, so the scaled
Deployment and the status the operator keeps about it stay put while the operator is killed
and restarted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from matchops_devenv.access import ClusterAccess
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.namespace import CRD, Namespace, install_crd, sample, wait_for
from matchops_devenv.rabbitmq import RabbitMQ

from .operator_run import OperatorProcess
from .report import Figures, seconds

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

PEERING_CRDS = Path(__file__).parent / "data" / "kopf-peering-crds.yaml"
NAME = "matches"


@pytest.fixture(scope="module")
def crd(cluster: ClusterAccess) -> None:
    install_crd(cluster, CRD, "matchingestions.matchops.dev")


@pytest.fixture
def ns(
    cluster: ClusterAccess, crd: None, namespace: str, vhost: Vhost, rabbitmq: RabbitMQ
) -> Namespace:
    space = Namespace(cluster, namespace)
    space.secret("rabbitmq", {"url": vhost.url, "management-url": rabbitmq.management_url})
    space.secret("postgres", {"dsn": "postgresql://matchops@postgres:5432/matches"})
    return space


def children(ns: Namespace, kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ns.get(kind, "-l", f"matchops.dev/ingestion={NAME}")["items"]
    return found


def prefetch_of(ns: Namespace) -> str | None:
    deployments = children(ns, "deployments")
    if len(deployments) != 1:
        return None
    (container,) = deployments[0]["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var.get("value") for var in container["env"]}
    return env.get("MATCHOPS_PREFETCH")


def replicas(ns: Namespace) -> int:
    count: int = ns.get("deployment", f"{NAME}-worker")["spec"]["replicas"]
    return count


def pipeline(**changes: Any) -> dict[str, Any]:
    """The legacy sample, scaling to 3 workers for 250 waiting messages and never back down."""
    return sample(
        "legacy-celery.yaml",
        workers__maxReplicas=3,
        workers__targetBacklogPerReplica=100,
        workers__scaleDownDelaySeconds=3600,
        **changes,
    )


def observed(ns: Namespace) -> dict[str, Any] | None:
    """The resource, once its status describes its current generation."""
    found: dict[str, Any] = ns.get("matchingestion", NAME)
    current = found.get("status", {}).get("observedGeneration") == found["metadata"]["generation"]
    return found if current else None


def scaled(ns: Namespace) -> list[str]:
    return [e["message"] for e in ns.events(NAME) if e["reason"] == "Scaled"]


@pytest.mark.parametrize(
    "kills",
    [pytest.param(10, id="10-kills"), pytest.param(40, id="40-kills", marks=pytest.mark.slow)],
)
def test_operator_killed_mid_reconcile_converges(
    ns: Namespace,
    vhost: Vhost,
    tmp_path: Path,
    fault_report: Callable[[Figures], None],
    kills: int,
) -> None:
    rng = random.Random(kills)
    ns.apply(pipeline())

    def operator(number: int) -> OperatorProcess:
        # Polls every 200 ms: a reconcile is nearly always under way when the kill lands.
        return OperatorProcess(
            tmp_path, ns.cluster, ns.name, f"operator-{number}", "--standalone", poll="200ms"
        )

    first = operator(0).start()
    try:
        ns.wait_condition(NAME, "TopologyReady", "True")
        vhost.publish("matches", "matches", [b"{}"] * 250)
        wait_for(lambda: replicas(ns) == 3, "3 workers")
        wait_for(lambda: observed(ns), "the scale recorded")
    finally:
        first.kill()
    before = ns.get("matchingestion", NAME)["status"]
    scaled_before = scaled(ns)

    unfinished = 0
    for number in range(1, kills + 1):
        # Each restart finds a spec change to apply, and polls to run.
        ns.apply(pipeline(workers__prefetch=300 + number))
        process = operator(number).start()
        process.wait_started()
        # The first reconcile runs within about 0.2 s of logging in, polls every 0.2 s after.
        time.sleep(rng.uniform(0.0, 0.3))
        process.kill()
        unfinished += observed(ns) is None or prefetch_of(ns) != str(300 + number)
        assert "Traceback" not in process.log, process.log[-3000:]

    # Kills that land after a reconcile finished prove nothing about one cut short.
    assert unfinished > 0, "every kill landed after the spec change was applied"

    last = 300 + kills + 1
    ns.apply(pipeline(workers__prefetch=last))
    final = operator(kills + 1).start()
    restarted = time.monotonic()
    try:
        wait_for(lambda: prefetch_of(ns) == str(last), "the last spec in the Deployment")
        mi = wait_for(lambda: observed(ns), "observedGeneration to catch up")
        converged = time.monotonic() - restarted
        time.sleep(2)  # polls go on without a crash
        assert final.running()
    finally:
        code = final.stop()
    assert code == 0, final.log[-3000:]

    uid = mi["metadata"]["uid"]
    for kind in ("cronjobs", "deployments"):
        (child,) = children(ns, kind)
        assert [o["uid"] for o in child["metadata"]["ownerReferences"]] == [uid], kind
    assert mi["metadata"]["finalizers"] == ["matchops.dev/finalizer"]
    status = mi["status"]
    types = [c["type"] for c in status["conditions"]]
    assert len(types) == len(set(types)), types
    assert {"Ready", "TopologyReady", "ScraperReady", "WorkersReady"} <= set(types)
    # The autoscaler's memory survived every kill: no new scale decision, same replicas.
    assert replicas(ns) == 3
    assert status["workers"]["lastScaleTime"] == before["workers"]["lastScaleTime"]
    assert status["workers"]["desiredReplicas"] == 3
    assert scaled(ns) == scaled_before
    created = [e["message"] for e in ns.events(NAME) if e["reason"] == "Created"]
    assert len(created) == len(set(created)), f"a child was created twice: {created}"
    fault_report(
        Figures(
            scenario=f"operator SIGKILLed {kills} times mid-reconcile",
            messages_in=None,
            stored=None,
            dead_lettered=None,
            lost=None,
            duplicated=0,
            dead_letters_repeated=None,
            recovery=f"{seconds(converged)} from start to converged",
            notes=(
                f"{unfinished} kills landed before a spec change was fully applied; one CronJob "
                "and one Deployment, each owned once; scale decisions and status kept"
            ),
        )
    )


@pytest.fixture(scope="module")
def peering(cluster: ClusterAccess) -> Iterator[None]:
    """kopf's peering resources, for this module only (other tests run without them)."""
    install_crd(cluster, PEERING_CRDS, "kopfpeerings.kopf.dev")
    yield
    cluster.kubectl("delete", "-f", str(PEERING_CRDS), "--ignore-not-found", "--wait=false")


def operator_replica(ns: Namespace, state: Path, name: str) -> OperatorProcess:
    return OperatorProcess(
        state, ns.cluster, ns.name, name, "--no-standalone", "--peering-name", "matchops"
    )


def pausing(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Paus" in line or "Resum" in line]


def acting(ns: Namespace) -> set[str]:
    """The operator replicas that recorded Events about the resource."""
    return {e.get("reportingInstance", "") for e in ns.events(NAME)}


def test_operator_replicas_elect_one_and_hand_over(
    ns: Namespace,
    peering: None,
    tmp_path: Path,
    fault_report: Callable[[Figures], None],
) -> None:
    ns.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "matchops"}})
    replicas = {
        name: operator_replica(ns, tmp_path, name).start() for name in ("replica-a", "replica-b")
    }
    try:
        for replica in replicas.values():
            replica.wait_started()
        # The replica started first acts until it sees the other's peering record (a moment
        # on a quiet machine, seconds on a loaded one); the claim is about the settled state.
        wait_for(
            lambda: any(pausing(replica.log) for replica in replicas.values()),
            "one replica to pause in favour of the other",
            timeout=60,
        )
        ns.apply(pipeline())
        try:
            ns.wait_condition(NAME, "Ready", "True", timeout=60)
        except AssertionError as exc:
            said = {name: pausing(replica.log) for name, replica in replicas.items()}
            raise AssertionError(f"no replica served the resource: {said}") from exc
        (active,) = acting(ns)
        (standby,) = set(replicas) - {active}
        assert "Pausing operations in favour of" in replicas[standby].log
        assert "Pausing operations" not in replicas[active].log

        replicas[active].kill()
        killed = time.monotonic()
        ns.apply(pipeline(workers__prefetch=333))
        wait_for(lambda: prefetch_of(ns) == "333", "the standby to apply a change", timeout=120)
        took_over = time.monotonic() - killed
        assert replicas[standby].log.count("Resuming operations") == 1

        # A rolling update: the new replica acts at once, the old one hands over as it stops.
        newest = replicas["replica-c"] = operator_replica(ns, tmp_path, "replica-c").start()
        newest.wait_started()
        wait_for(
            lambda: replicas[standby].log.count("Pausing operations in favour of") == 2,
            "the running replica to yield to the new one",
        )
        ns.apply(pipeline(workers__prefetch=334))
        wait_for(lambda: prefetch_of(ns) == "334", "the new replica to apply a change")
        assert newest.stop() == 0
        stopped = time.monotonic()
        ns.apply(pipeline(workers__prefetch=335))
        wait_for(lambda: prefetch_of(ns) == "335", "the old replica to resume", timeout=60)
        handed_over = time.monotonic() - stopped
        assert replicas[standby].running()
    finally:
        for replica in replicas.values():
            replica.stop()
    fault_report(
        Figures(
            scenario="two operator replicas: the active one SIGKILLed, then a rolling update",
            messages_in=None,
            stored=None,
            dead_lettered=None,
            lost=None,
            duplicated=0,
            dead_letters_repeated=None,
            recovery=(
                f"standby applied a change {seconds(took_over)} after the kill, "
                f"{seconds(handed_over)} after a clean stop"
            ),
            notes=(
                "kopf peering: the newest replica acts, the others pause; 15 s peering lifetime"
            ),
        )
    )
