"""Pods really run on the local node: the project image consumes, stores, publishes and stops.

Every test uses the session's node (`node` fixture) and the session's RabbitMQ and PostgreSQL,
which listen on loopback only: pods reach them through the address `node.reachable` gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import psycopg
import pytest
from matchops_devenv import toolchain
from matchops_devenv.access import ClusterAccess
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.hostnet import in_netns
from matchops_devenv.images import PAUSE_IMAGE, PROJECT_IMAGE
from matchops_devenv.namespace import Namespace
from matchops_devenv.node import Node
from matchops_devenv.waiting import wait_for
from matchops_worker.sample import SeasonPlan, season_reports

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.node]

QUEUE = "matches"
# What an operator's client library does in a pod: the Service's address from the
# environment, the service account's token and CA from the mounted volume.
IN_CLUSTER_CLIENT = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host = os.environ["KUBERNETES_SERVICE_HOST"]
port = os.environ["KUBERNETES_SERVICE_PORT"]
namespace = open(sa + "/namespace").read()
request = urllib.request.Request(
    f"https://{host}:{port}/api/v1/namespaces/{namespace}/pods",
    headers={"Authorization": "Bearer " + open(sa + "/token").read()},
)
context = ssl.create_default_context(cafile=sa + "/ca.crt")
with urllib.request.urlopen(request, context=context) as response:
    print(json.dumps({"status": response.status, "host": host}))
"""
# How long pods take to get somewhere, on a machine shared with other work.
POD_TIMEOUT = 90.0


def pipeline_secret(ns: Namespace, amqp_url: str, dsn: str | None = None) -> None:
    """The Secret the pods' containers take their settings from."""
    settings = {"MATCHOPS_AMQP_URL": amqp_url}
    if dsn is not None:
        settings["MATCHOPS_DATABASE_DSN"] = dsn
    ns.secret("pipeline", settings)


def kubectl_until(ns: Namespace, *args: str) -> str:
    """`kubectl rollout status` or `kubectl wait` with two minutes to succeed."""
    return ns.kubectl(*args, "--timeout=120s", timeout=150)


@pytest.fixture
def ns(cluster: ClusterAccess, namespace: str, node: Node) -> Namespace:
    return Namespace(cluster, namespace)


def container(
    command: list[str], env: dict[str, str] | None = None, pull: str = "Never"
) -> dict[str, Any]:
    return {
        "name": "main",
        "image": PROJECT_IMAGE,
        # Images come from the node's containerd: there is no registry to pull from.
        "imagePullPolicy": pull,
        "command": command,
        "envFrom": [{"secretRef": {"name": "pipeline", "optional": True}}],
        "env": [{"name": key, "value": value} for key, value in (env or {}).items()],
    }


def worker_deployment(name: str, settings: dict[str, str]) -> dict[str, Any]:
    worker = container(["matchops-worker"], {"MATCHOPS_DECLARE_TOPOLOGY": "true", **settings})
    worker["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": 9100}, "periodSeconds": 1}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 30, "containers": [worker]},
            },
        },
    }


def job_spec(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "backoffLimit": 0,
        "template": {"spec": {"restartPolicy": "Never", "containers": [container(command, env)]}},
    }


def matches(dsn: str) -> list[tuple[str, str]]:
    """(external id, status) of every stored match."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT external_match_id, status FROM matches").fetchall()
    return [(str(external_id), str(status)) for external_id, status in rows]


def reports(teams: int, seed: int) -> list[dict[str, Any]]:
    return season_reports(SeasonPlan(teams_per_division=teams, seed=seed))


def match_id(report: dict[str, Any]) -> str:
    return str(report.get("external_match_id") or report["match_id"])


def final_statuses(season: list[dict[str, Any]]) -> dict[str, str]:
    """Each match's status after the whole season: its last report's."""
    return {match_id(r): str(r.get("match_status") or r["status"]) for r in season}


def bodies(messages: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(message).encode() for message in messages]


def test_node_is_ready_with_the_images_imported(ns: Namespace, node: Node) -> None:
    found = ns.get("node", node.name)
    conditions = {c["type"]: c["status"] for c in found["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    # The node lifecycle controller lifted the not-ready taint the node registered with.
    assert found["spec"].get("taints", []) == []
    addresses = {a["type"]: a["address"] for a in found["status"]["addresses"]}
    assert node.network is not None
    assert addresses["InternalIP"] == str(node.network.node_address)
    info = found["status"]["nodeInfo"]
    assert info["kubeletVersion"] == toolchain.reported_version(toolchain.program("kubelet"))
    assert info["containerRuntimeVersion"].startswith("containerd://1.6")
    socket = node.state_dir / "containerd" / "containerd.sock"
    listed = subprocess.run(
        ["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "list", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {PAUSE_IMAGE, PROJECT_IMAGE} <= set(listed)


def test_reachable_urls_serve_this_machine_too(node: Node, vhost: Vhost, database: str) -> None:
    """An operator run in-process reads the same Secrets as its pods."""
    url = node.reachable(vhost.url)
    assert f"@{node.host_address}:" in url
    connection = pika.BlockingConnection(pika.URLParameters(url))
    connection.close()
    with psycopg.connect(node.reachable(database)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_worker_deployment_consumes_the_queue_into_the_database(
    ns: Namespace, node: Node, vhost: Vhost, database: str
) -> None:
    pipeline_secret(ns, node.reachable(vhost.url), node.reachable(database))
    ns.apply(worker_deployment("worker", {"MATCHOPS_QUEUE": QUEUE}))
    kubectl_until(ns, "rollout", "status", "deployment/worker")

    season = reports(teams=16, seed=11)
    vhost.publish(QUEUE, QUEUE, bodies(season))

    # Every match stored, and updated by the results reported after its fixture: each as its
    # last report says.
    expected = final_statuses(season)
    assert len(season) > 300
    wait_for(
        lambda: dict(matches(database)) == expected,
        "every match in its final state",
        POD_TIMEOUT,
    )
    assert vhost.wait_for_depth(QUEUE, 0) == 0


def test_scaled_down_worker_finishes_the_batch_it_holds(
    ns: Namespace, node: Node, vhost: Vhost, database: str
) -> None:
    pipeline_secret(ns, node.reachable(vhost.url), node.reachable(database))
    # A batch closes at 1000 messages, after ten minutes, or when no message has come for ten
    # minutes: what the worker receives stays in hand, unacknowledged and unstored, until
    # something else makes it flush.
    settings = {
        "MATCHOPS_QUEUE": QUEUE,
        "MATCHOPS_PREFETCH": "1000",
        "MATCHOPS_BATCH_SIZE": "1000",
        "MATCHOPS_BATCH_WAIT": "10m",
        "MATCHOPS_BATCH_IDLE": "10m",
    }
    ns.apply(worker_deployment("worker", settings))
    kubectl_until(ns, "rollout", "status", "deployment/worker")
    fixtures = reports(teams=14, seed=5)[:150]  # the season's fixtures come first
    assert len(final_statuses(fixtures)) == 150
    vhost.publish(QUEUE, QUEUE, bodies(fixtures))
    wait_for(lambda: vhost.depth(QUEUE) == 0, "the worker to take every message", POD_TIMEOUT)
    assert matches(database) == []

    logs = subprocess.Popen(
        [str(ns.cluster.kubectl_path), "-n", ns.name, "logs", "-f", "deployment/worker"],
        env={**os.environ, "KUBECONFIG": str(ns.cluster.kubeconfig)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1)  # the stream is attached before the pod is told to stop
        ns.kubectl("scale", "deployment/worker", "--replicas=0")
        wait_for(
            lambda: not ns.get("pods", "-l", "app=worker")["items"],
            "the worker pod to be gone",
            POD_TIMEOUT,
        )
        output, _ = logs.communicate(timeout=30)
    finally:
        logs.kill()

    # The pod got SIGTERM, stored and acknowledged its batch, then exited: nothing is left
    # unacknowledged (it would be back in the queue) and nothing is lost.
    assert "finishing the batch in hand" in output
    assert "worker stopped" in output
    assert {external_id for external_id, _ in matches(database)} == {match_id(f) for f in fixtures}
    assert vhost.depth(QUEUE) == 0


def local_sample_count(*args: str) -> int:
    """How many messages `matchops sample-season` makes with `args`, run on this machine."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("matchops")), "sample-season", *args, "--out", "-"],
        capture_output=True,
        check=True,
    )
    return len(done.stdout.splitlines())


def test_job_runs_a_pod_of_the_image_to_completion(ns: Namespace, node: Node, vhost: Vhost) -> None:
    pipeline_secret(ns, node.reachable(vhost.url))
    sample = ["sample-season", "--teams", "6", "--seed", "3"]
    ns.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "publish"},
            "spec": job_spec(["matchops", *sample, "--publish", "--declare"]),
        }
    )
    kubectl_until(ns, "wait", "--for=condition=complete", "job/publish")

    expected = local_sample_count(*sample[1:])
    report = json.loads(ns.kubectl("logs", "job/publish").strip().splitlines()[-1])
    assert report["published"] == expected
    assert vhost.depth(QUEUE) == expected


def test_cronjob_job_created_by_hand_runs_to_completion(
    ns: Namespace, node: Node, vhost: Vhost
) -> None:
    pipeline_secret(ns, node.reachable(vhost.url))
    sample = ["sample-season", "--teams", "4", "--seed", "9"]
    ns.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "scraper"},
            "spec": {
                "schedule": "0 6 * * *",
                "suspend": True,
                "jobTemplate": {
                    "spec": job_spec(
                        ["matchops", *sample, "--publish", "--declare"],
                        {"MATCHOPS_QUEUE": "scrapes"},
                    )
                },
            },
        }
    )
    ns.kubectl("create", "job", "--from=cronjob/scraper", "scraper-manual")
    kubectl_until(ns, "wait", "--for=condition=complete", "job/scraper-manual")
    assert vhost.depth("scrapes") == local_sample_count(*sample[1:])


def test_kubectl_exec_and_logs_reach_the_pod(ns: Namespace) -> None:
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "shell"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    container(
                        [
                            "python3",
                            "-c",
                            "print('hello from the pod', flush=True); import time; time.sleep(600)",
                        ],
                        # Kubernetes' default for a tag other than `latest`: the imported
                        # image counts as present, nothing is pulled.
                        pull="IfNotPresent",
                    )
                ],
            },
        }
    )
    kubectl_until(ns, "wait", "--for=condition=Ready", "pod/shell")
    wait_for(lambda: "hello from the pod" in ns.kubectl("logs", "shell"), "the log line")
    assert "Consume match messages" in ns.kubectl(
        "exec", "shell", "--", "matchops-worker", "--help"
    )
    assert ns.kubectl("exec", "shell", "--", "id", "-u").strip() == "65532"


def test_pods_reach_the_api_server_through_the_kubernetes_service(ns: Namespace) -> None:
    for manifest in (
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "pod-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns.name}],
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "in-cluster"},
            "spec": job_spec(["python3", "-c", IN_CLUSTER_CLIENT]),
        },
    ):
        ns.apply(manifest)
    kubectl_until(ns, "wait", "--for=condition=complete", "job/in-cluster")
    result = json.loads(ns.kubectl("logs", "job/in-cluster").strip())
    service = ns.get("service", "kubernetes", "-n", "default")
    assert result == {"status": 200, "host": service["spec"]["clusterIP"]}


def output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def in_node(node: Node, argv: list[str]) -> str:
    """What `argv` prints run in the node's network namespace."""
    assert node.network is not None
    return output(in_netns(node.network, argv))


def node_nat_rules(node: Node) -> list[str]:
    """The node's nat table, each rule with its counters: `[packets:bytes] -A CHAIN ...`."""
    return in_node(node, ["iptables-save", "-c", "-t", "nat"]).splitlines()


def test_kube_proxy_rules_stay_in_the_node_namespace(node: Node) -> None:
    network = node.network
    assert network is not None

    def kube_proxy_rules() -> list[str] | None:
        table = node_nat_rules(node)
        return table if any("default/kubernetes:https" in line for line in table) else None

    # kube-proxy writes its rules a moment after the node is up.
    inside = wait_for(kube_proxy_rules, "kube-proxy's rules in the node's namespace")
    assert any(line.startswith(":KUBE-SERVICES") for line in inside)
    host = output(["iptables-save", "-t", "nat"])
    ours = [line for line in host.splitlines() if network.node_id in line]
    assert ours
    assert all(network.chain in line for line in ours), ours
    assert f"node {network.node_id}" in host


def test_the_node_drops_packets_tracking_finds_invalid_rather_than_reset(node: Node) -> None:
    # A reply out of the tracked window would otherwise miss the node's translation and
    # be answered with a reset that ends a pod's connection to the broker or the database.
    network = node.network
    assert network is not None
    liberal = ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal"]
    assert in_node(node, liberal).strip() == "1"
    node_rules = in_node(node, ["iptables-save", "-t", "filter"])
    assert any(
        line.startswith("-A INPUT") and "--ctstate INVALID" in line and line.endswith("-j DROP")
        for line in node_rules.splitlines()
    ), node_rules
    host_rules = output(["iptables-save", "-t", "filter"])
    assert any(
        line.startswith(f"-A INPUT -i {network.host_link}") and "--ctstate INVALID" in line
        for line in host_rules.splitlines()
    ), host_rules


HOLD_CONNECTION = """
import socket, sys, time
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
time.sleep(300)
"""


def snat_packets(node: Node) -> int:
    """Connections the node's SNAT rule has translated so far (it sees each one's first packet)."""
    network = node.network
    assert network is not None
    to_node = f"--to-source {network.node_address}"
    rules = [line for line in node_nat_rules(node) if line.endswith(to_node)]
    assert len(rules) == 1, rules
    counters, rule = rules[0].split(" ", 1)
    pods = network.pod_subnet
    assert rule == f"-A POSTROUTING -s {pods} ! -d {pods} -o {network.node_link} -j SNAT {to_node}"
    return int(counters.strip("[]").split(":")[0])


def plugin_masquerades(node: Node) -> list[str]:
    """Masquerade rules in the CNI plugin's per-pod chains (its port mappings' excepted)."""
    return [
        rule
        for rule in node_nat_rules(node)
        if rule.endswith("-j MASQUERADE")
        and (chain := rule.split()[2]).startswith("CNI-")
        and not chain.startswith("CNI-HOSTPORT")
    ]


def test_pods_leave_the_node_by_its_snat_rule_not_a_masquerade(
    ns: Namespace, node: Node, vhost: Vhost
) -> None:
    # With the CNI plugin's masquerade, removing one pod's interface made connection tracking
    # forget other pods' connections, and the server's next packet was answered with a reset.
    broker = urlsplit(node.reachable(vhost.url))
    assert broker.hostname is not None
    assert broker.port is not None
    before = snat_packets(node)
    command = ["python3", "-c", HOLD_CONNECTION, broker.hostname, str(broker.port)]
    ns.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "hold"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [container(command, pull="IfNotPresent")],
            },
        }
    )
    try:
        kubectl_until(ns, "wait", "--for=condition=Ready", "pod/hold")
        wait_for(lambda: "connected" in ns.kubectl("logs", "hold"), "the pod's connection")
        # While the pod runs, its connection has gone through the node's rule, and no chain of
        # the plugin masquerades it.
        assert snat_packets(node) > before
        assert plugin_masquerades(node) == []
    finally:
        ns.kubectl("delete", "pod/hold", "--wait=false")
