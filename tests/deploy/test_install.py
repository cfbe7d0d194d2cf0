"""Install the operator into the real test cluster with `helm install` and `kubectl apply -k`,
read the objects back, and ask the API server what the operator's ServiceAccount may do.

The operator pod stays Pending here (the control plane has no node); the node and end-to-end
tests run it. The MatchIngestion CRD is cluster state shared with the rest of the session, so
these tests leave it as they found it.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from matchops_devenv import toolchain
from matchops_devenv.access import ClusterAccess

from .render import CHART, MANIFESTS, Access, expected_access

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

CRD = "customresourcedefinition/matchingestions.matchops.dev"
HELM_OWNERSHIP = ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace")


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def helm(cluster: ClusterAccess, *args: str) -> str:
    result = subprocess.run(
        [str(toolchain.program("helm")), *args],
        env=dict(os.environ, KUBECONFIG=str(cluster.kubeconfig)),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result.stdout


def get(cluster: ClusterAccess, *args: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return loaded


def exists(cluster: ClusterAccess, *args: str) -> bool:
    return cluster.kubectl("get", *args, "--ignore-not-found", "-o", "name").stdout.strip() != ""


def can_i(cluster: ClusterAccess, account: tuple[str, str], access: Access) -> bool:
    namespace, name = account
    result = cluster.kubectl(
        *access.kubectl_args(), f"--as=system:serviceaccount:{namespace}:{name}", check=False
    )
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(access.kubectl_args())}: {result.stderr}"
    return answer == "yes"


def assert_access(cluster: ClusterAccess, account: tuple[str, str], rows: list[Access]) -> None:
    wrong = [str(row) for row in rows if can_i(cluster, account, row) != row.allowed]
    assert not wrong, f"the API server disagrees; the operator's ServiceAccount should: {wrong}"


@pytest.fixture
def namespaces(cluster: ClusterAccess) -> Iterator[list[str]]:
    """Three fresh namespaces: the operator's, one it serves, one it must not touch."""
    names = [f"deploy-{role}-{_suffix()}" for role in ("ops", "served", "other")]
    for name in names:
        cluster.kubectl("create", "namespace", name)
    yield names
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="module")
def crd_as_found(cluster: ClusterAccess) -> Iterator[None]:
    """Put the CRD back as it was: absent, or with its former labels and annotations."""
    before = get(cluster, CRD)["metadata"] if exists(cluster, CRD) else None
    yield
    if before is None:
        cluster.kubectl("delete", CRD, "--ignore-not-found", "--timeout=60s")
        return
    now = get(cluster, CRD)["metadata"]
    restore: dict[str, dict[str, str | None]] = {}
    for field in ("labels", "annotations"):
        old, new = before.get(field, {}), now.get(field, {})
        restore[field] = {k: None for k in new if k not in old} | dict(old)
    cluster.kubectl("patch", CRD, "--type=merge", "-p", json.dumps({"metadata": restore}))


def hand_crd_to(cluster: ClusterAccess, release: str, namespace: str) -> None:
    """Let `release` adopt a CRD that is already installed (what docs/install.md tells users)."""
    if not exists(cluster, CRD):
        return
    cluster.kubectl("label", "--overwrite", CRD, "app.kubernetes.io/managed-by=Helm")
    cluster.kubectl(
        "annotate",
        "--overwrite",
        CRD,
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
    )


def helm_install(cluster: ClusterAccess, release: str, namespace: str, *sets: str) -> None:
    hand_crd_to(cluster, release, namespace)
    args = ["install", release, str(CHART), "--namespace", namespace]
    for value in ("image.tag=dev", "image.pullPolicy=Never", *sets):
        args += ["--set", value]
    notes = helm(cluster, *args)
    assert f"installed as release {release} in namespace {namespace}" in notes


def assert_crd_installed_and_kept_by(cluster: ClusterAccess, release: str) -> None:
    crd = get(cluster, CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established.get("Established") == "True"


def assert_operator_deployment(
    cluster: ClusterAccess, namespace: str, name: str, image: str
) -> None:
    deployment = get(cluster, "deployment", name, "-n", namespace)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["serviceAccountName"] == name
    assert container["image"] == image
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["MATCHOPS_OPERATOR_IMAGE"] == image
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert exists(cluster, "serviceaccount", name, "-n", namespace)


def test_helm_install_namespaced(
    cluster: ClusterAccess, crd_as_found: None, namespaces: list[str]
) -> None:
    ops, served, other = namespaces
    release = f"ns-{_suffix()}"
    name = f"{release}-matchops"
    helm_install(cluster, release, ops, f"watch.namespaces={{{served}}}")
    try:
        assert_crd_installed_and_kept_by(cluster, release)
        assert_operator_deployment(cluster, ops, name, "localhost/matchops:dev")
        assert exists(cluster, "role", name, "-n", served)
        assert not exists(cluster, "role", name, "-n", ops)
        rows = expected_access(served=[served], secret_namespaces=[], elsewhere=other)
        assert_access(cluster, (ops, name), rows)
    finally:
        helm(cluster, "uninstall", release, "--namespace", ops, "--wait")
    # The CRD outlives the release (and with it every MatchIngestion); the rest goes.
    assert exists(cluster, CRD)
    assert not exists(cluster, "clusterrole", f"{name}-discovery")
    assert not exists(cluster, "role", name, "-n", served)


def test_helm_install_cluster_wide(
    cluster: ClusterAccess, crd_as_found: None, namespaces: list[str]
) -> None:
    ops, served, other = namespaces
    release = f"cw-{_suffix()}"
    name = f"{release}-matchops"
    helm_install(cluster, release, ops, "watch.mode=cluster", f"rbac.secretNamespaces={{{served}}}")
    try:
        assert_crd_installed_and_kept_by(cluster, release)
        assert_operator_deployment(cluster, ops, name, "localhost/matchops:dev")
        binding = get(cluster, "rolebinding", f"{name}-secret-reader", "-n", served)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f"{name}-secret-reader",
        }
        rows = expected_access(served=None, secret_namespaces=[served], elsewhere=other)
        assert_access(cluster, (ops, name), rows)
    finally:
        helm(cluster, "uninstall", release, "--namespace", ops, "--wait")
    assert not exists(cluster, "clusterrole", name)


def _overlay(tmp_path: Path, namespace: str, prefix: str) -> Path:
    """A user's overlay of manifests/base: its own namespace and name prefix."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    transformer = {
        "apiVersion": "builtin",
        "kind": "NamespaceTransformer",
        "metadata": {"name": namespace, "namespace": namespace},
        "setRoleBindingSubjects": "allServiceAccounts",
        "fieldSpecs": [
            {"path": "metadata/namespace", "create": True},
            {"path": "metadata/name", "kind": "Namespace", "create": True},
        ],
    }
    kustomization = {
        "resources": [os.path.relpath(MANIFESTS / "base", overlay)],
        "namePrefix": prefix,
        "images": [{"name": "localhost/matchops", "newTag": "dev"}],
        "transformers": [yaml.safe_dump(transformer)],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return overlay


def test_kustomize_apply(cluster: ClusterAccess, crd_as_found: None, tmp_path: Path) -> None:
    suffix = _suffix()
    namespace, other = f"deploy-kz-{suffix}", f"deploy-other-{suffix}"
    prefix = f"kz{suffix}-"
    name = f"{prefix}matchops"
    overlay = _overlay(tmp_path, namespace, prefix)
    cluster.kubectl("create", "namespace", other)
    try:
        applied = cluster.kubectl("apply", "--server-side", "-k", str(overlay)).stdout
        assert f"namespace/{namespace} serverside-applied" in applied
        assert "customresourcedefinition.apiextensions.k8s.io/matchingestions.matchops.dev" in (
            applied
        )
        assert exists(cluster, CRD)
        assert_operator_deployment(cluster, namespace, name, "localhost/matchops:dev")
        role = get(cluster, "role", name, "-n", namespace)
        assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]} in role["rules"]
        rows = expected_access(served=[namespace], secret_namespaces=[], elsewhere=other)
        assert_access(cluster, (namespace, name), rows)
    finally:
        for namespace_name in (namespace, other):
            cluster.kubectl("delete", "namespace", namespace_name, "--wait=false")
        cluster.kubectl(
            "delete",
            f"clusterrolebinding/{name}-discovery",
            f"clusterrole/{name}-discovery",
            "--ignore-not-found",
        )
