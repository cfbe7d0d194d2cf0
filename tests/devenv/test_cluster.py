"""The session's control plane is a real Kubernetes: admission, controllers, kubectl."""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from matchops_devenv import pki, toolchain
from matchops_devenv.access import ClusterAccess, KubectlError
from matchops_devenv.controlplane import ControlPlane
from matchops_devenv.node import NodeConfig
from matchops_devenv.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.devenv.matchops.dev
spec:
  group: devenv.matchops.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                minReplicas: {type: integer}
                maxReplicas: {type: integer}
              x-kubernetes-validations:
                - rule: self.minReplicas <= self.maxReplicas
                  message: minReplicas must not exceed maxReplicas
"""


def _json(cluster: ClusterAccess, *args: str) -> Any:
    """kubectl's JSON output for `args`, parsed."""
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def _unpulled(name: str) -> dict[str, Any]:
    """A container of an image that exists nowhere and is never pulled.

    Its pods are created and, on the session's node if it has started, wait there: no registry
    is ever asked for the image.
    """
    return {"name": name, "image": f"registry.invalid/{name}:1", "imagePullPolicy": "Never"}


def _widget(name: str, namespace: str, low: int, high: int) -> str:
    return json.dumps(
        {
            "apiVersion": "devenv.matchops.dev/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"minReplicas": low, "maxReplicas": high},
        }
    )


def test_server_runs_its_program_and_kubectl_is_of_the_same_release(
    cluster: ClusterAccess, control_plane: ControlPlane
) -> None:
    version = _json(cluster, "version")
    server = version["serverVersion"]["gitVersion"]

    assert server == toolchain.reported_version(control_plane.program("kube-apiserver"))
    assert version["clientVersion"]["gitVersion"] == server


def test_kubectl_lists_namespaces_and_nodes(cluster: ClusterAccess) -> None:
    namespaces = cluster.kubectl("get", "namespaces", "-o", "name").stdout.split()
    nodes = cluster.kubectl("get", "nodes", "-o", "name")

    assert {"namespace/default", "namespace/kube-system"} <= set(namespaces)
    # The session's node, once a test has asked for it; none before.
    assert set(nodes.stdout.split()) <= {f"node/{NodeConfig().name}"}


def test_the_machines_kubectl_works_with_the_kubeconfig(cluster: ClusterAccess) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # CI machines are set up to have one: there, its absence is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail("no kubectl on the PATH, and $CI is set: CI must check the machine's one")
        pytest.skip("no kubectl installed on this machine")

    result = subprocess.run(
        [kubectl, "--kubeconfig", str(cluster.kubeconfig), "get", "namespace", "default"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "default" in result.stdout


def test_admin_is_a_cluster_admin(cluster: ClusterAccess) -> None:
    whoami = _json(cluster, "auth", "whoami")

    assert "system:masters" in whoami["status"]["userInfo"]["groups"]
    assert cluster.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"


def test_component_kubeconfig_authenticates_as_its_identity(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    path = control_plane.write_kubeconfig(pki.SCHEDULER, tmp_path / "scheduler.kubeconfig")
    scheduler = ClusterAccess(path, control_plane.server, control_plane.program("kubectl"))

    whoami = _json(scheduler, "auth", "whoami")

    assert whoami["status"]["userInfo"]["username"] == "system:kube-scheduler"
    # RBAC is enforced: the scheduler's role may bind pods but not delete namespaces.
    assert (
        scheduler.kubectl("auth", "can-i", "create", "pods", "--subresource=binding").stdout.strip()
        == "yes"
    )
    denied = scheduler.kubectl("auth", "can-i", "delete", "namespaces", check=False)
    assert denied.stdout.strip() == "no"


def test_cel_rule_of_a_crd_refuses_a_bad_object_with_its_message(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.devenv.matchops.dev", "--timeout=30s"
    )

    cluster.kubectl("create", "-f", "-", input=_widget("good", namespace, 1, 3))
    with pytest.raises(KubectlError) as refused:
        cluster.kubectl("create", "-f", "-", input=_widget("bad", namespace, 5, 2))

    assert "minReplicas must not exceed maxReplicas" in refused.value.stderr
    assert "spec: Invalid value" in refused.value.stderr
    names = cluster.kubectl("get", "widgets", "-n", namespace, "-o", "name").stdout.split()
    assert names == ["widget.devenv.matchops.dev/good"]


def test_garbage_collector_deletes_what_an_owner_owned(
    cluster: ClusterAccess, namespace: str
) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cluster.kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
        "data": {"k": "v"},
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(owned))

    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    def owned_gone() -> bool:
        result = cluster.kubectl("get", "configmap", "owned", "-n", namespace, check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_for(owned_gone, "garbage collection of the owned ConfigMap", timeout=30)


def test_deployment_controller_creates_a_replicaset_and_its_pods(
    cluster: ClusterAccess, namespace: str
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [_unpulled("web")]},
            },
        },
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(deployment))

    def pods_created() -> bool:
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "name")
        return len(pods.stdout.split()) == 2

    wait_for(pods_created, "two pods of the Deployment", timeout=30)
    replicasets = _json(cluster, "get", "replicasets", "-n", namespace)["items"]
    assert len(replicasets) == 1
    owner = replicasets[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Deployment", "web")


def _cronjob(cluster: ClusterAccess, namespace: str, name: str) -> None:
    scraper = {**_unpulled("scraper"), "command": ["scrape"]}
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": {
                "spec": {
                    "template": {"spec": {"restartPolicy": "OnFailure", "containers": [scraper]}}
                }
            },
        },
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(cronjob))


def test_job_created_from_a_cronjob_gets_its_pod(cluster: ClusterAccess, namespace: str) -> None:
    _cronjob(cluster, namespace, "scraper")

    cluster.kubectl("create", "job", "scrape-now", "--from=cronjob/scraper", "-n", namespace)

    def job_active() -> bool:
        job = _json(cluster, "get", "job", "scrape-now", "-n", namespace)
        return bool(job["status"].get("active") == 1)

    wait_for(job_active, "the Job controller starting a pod", timeout=30)
    pods = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", "job-name=scrape-now", "-o", "name"
    )
    assert len(pods.stdout.split()) == 1


def test_cronjob_controller_schedules_a_job(cluster: ClusterAccess, namespace: str) -> None:
    _cronjob(cluster, namespace, "every-minute")

    def scheduled() -> bool:
        jobs = _json(cluster, "get", "jobs", "-n", namespace)["items"]
        return any(
            ref["kind"] == "CronJob" and ref["name"] == "every-minute"
            for job in jobs
            for ref in job["metadata"].get("ownerReferences", [])
        )

    # The first run is at the next minute boundary.
    wait_for(scheduled, "a Job scheduled by the CronJob", timeout=75)
    status = _json(cluster, "get", "cronjob", "every-minute", "-n", namespace)["status"]
    assert "lastScheduleTime" in status


def test_namespace_fixture_gives_each_test_a_fresh_namespace(
    cluster: ClusterAccess, namespace: str
) -> None:
    assert namespace.startswith("test-")
    assert cluster.kubectl("get", "all", "-n", namespace, "-o", "name").stdout == ""
