"""Install the operator into the real test cluster with `helm install` and `kubectl apply -k`,
read the objects back, and ask the API server what the operator's ServiceAccount may do.

The operator pod runs only if the session's node has started for other tests, so these tests
never rely on it; the chart's images are used with imagePullPolicy Never, so nothing is pulled
either way. The operator program runs on this machine instead, with the chart's settings and
nothing but its ServiceAccount's token, against a real RabbitMQ: proof that the RBAC the chart
grants is enough. The MatchIngestion CRD is cluster state shared with the rest of the session,
so these tests leave it as they found it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from matchops_devenv.access import ClusterAccess, KubectlError
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.ports import free_port
from matchops_devenv.procs import Service, tail

from .render import (
    CHART,
    MANIFESTS,
    Access,
    env_of,
    expected_access,
    helm,
    load_all,
    operator_container,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

CRD = "customresourcedefinition/matchingestions.matchops.dev"
HELM_OWNERSHIP = ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace")


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


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
    """Give the CRD back with its former labels and annotations (no Helm ownership left).

    The CRD stays installed: other tests of the session share it, and deleting it would wait
    for every MatchIngestion of theirs whose finalizer no running operator removes.
    """
    before = get(cluster, CRD)["metadata"] if exists(cluster, CRD) else {}
    yield
    if not exists(cluster, CRD):
        return
    now = get(cluster, CRD)["metadata"]
    restore: dict[str, dict[str, str | None]] = {}
    for field in ("labels", "annotations"):
        old, new = before.get(field, {}), now.get(field, {})
        removed: dict[str, str | None] = {k: None for k in new if k not in old}
        restore[field] = {**removed, **old}
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
    never_pull = ("image.pullPolicy=Never", "image.childPullPolicy=Never")
    for value in ("image.tag=dev", *never_pull, *sets):
        args += ["--set", value]
    notes = helm(*args, kubeconfig=cluster.kubeconfig)
    assert f"installed as release {release} in namespace {namespace}" in notes


def uninstall(cluster: ClusterAccess, release: str, namespace: str) -> None:
    helm("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=cluster.kubeconfig)


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
        uninstall(cluster, release, ops)
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
        uninstall(cluster, release, ops)
    assert not exists(cluster, "clusterrole", name)


@dataclass(frozen=True)
class Applied:
    """A kustomization applied to the cluster: where the operator went, and its name."""

    namespace: str
    name: str
    output: str  # what `kubectl apply` printed


def _overlay(directory: Path, source: Path, namespace: str, prefix: str) -> Path:
    """A user's overlay of `source`: its own namespace, name prefix and image tag."""
    directory.mkdir(parents=True)
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
        "resources": [os.path.relpath(source, directory)],
        # Cluster-scoped names (the discovery ClusterRole) must not meet another install's.
        "namePrefix": prefix,
        "images": [{"name": "localhost/matchops", "newTag": "dev"}],
        "transformers": [yaml.safe_dump(transformer)],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@pytest.fixture
def apply_overlay(
    cluster: ClusterAccess, crd_as_found: None, tmp_path: Path
) -> Iterator[Callable[[Path], Applied]]:
    """Server-side applies an overlay of a kustomization (base, overlays/namespaced) into a
    fresh namespace; removes what it applied afterwards, the MatchIngestions there included."""
    applied: list[Applied] = []

    def apply(source: Path) -> Applied:
        suffix = _suffix()
        namespace, prefix = f"deploy-kz-{suffix}", f"kz{suffix}-"
        overlay = _overlay(tmp_path / f"overlay-{suffix}", source, namespace, prefix)
        output = cluster.kubectl("apply", "--server-side", "-k", str(overlay)).stdout
        applied.append(Applied(namespace, f"{prefix}matchops", output))
        return applied[-1]

    yield apply
    for done in applied:
        cluster.kubectl(
            "delete", "deployment", done.name, "-n", done.namespace, "--ignore-not-found"
        )
        found = get(cluster, "matchingestions", "-n", done.namespace)["items"]
        drop_pipelines(cluster, [(done.namespace, mi["metadata"]["name"]) for mi in found])
        cluster.kubectl("delete", "namespace", done.namespace, "--wait=false")
        cluster.kubectl(
            "delete",
            f"clusterrolebinding/{done.name}-discovery",
            f"clusterrole/{done.name}-discovery",
            "--ignore-not-found",
        )


@pytest.mark.parametrize(
    "source",
    [MANIFESTS / "base", MANIFESTS / "overlays" / "namespaced"],
    ids=["base", "namespaced-overlay"],
)
def test_kustomize_apply(
    cluster: ClusterAccess, apply_overlay: Callable[[Path], Applied], source: Path
) -> None:
    applied = apply_overlay(source)
    namespace, name = applied.namespace, applied.name
    other = f"deploy-other-{_suffix()}"
    cluster.kubectl("create", "namespace", other)
    try:
        assert f"namespace/{namespace} serverside-applied" in applied.output
        assert "customresourcedefinition.apiextensions.k8s.io/matchingestions.matchops.dev" in (
            applied.output
        )
        assert exists(cluster, CRD)
        assert_operator_deployment(cluster, namespace, name, "localhost/matchops:dev")
        role = get(cluster, "role", name, "-n", namespace)
        assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]} in role["rules"]
        rows = expected_access(served=[namespace], secret_namespaces=[], elsewhere=other)
        assert_access(cluster, (namespace, name), rows)
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false")


def contains(stored: Any, written: Any) -> bool:
    """Whether every field `written` sets is in `stored` with the same value."""
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(
            key in stored and contains(stored[key], value) for key, value in written.items()
        )
    return bool(stored == written)


def test_samples_apply_to_the_namespaced_overlay(
    cluster: ClusterAccess, apply_overlay: Callable[[Path], Applied], tmp_path: Path
) -> None:
    namespace = apply_overlay(MANIFESTS / "overlays" / "namespaced").namespace
    cluster.kubectl("wait", "--for=condition=Established", CRD, "--timeout=60s", timeout=90)
    # The samples in the overlay's namespace, wherever that is.
    samples = tmp_path / "samples"
    samples.mkdir()
    kustomization = {
        "namespace": namespace,
        "resources": [os.path.relpath(MANIFESTS / "samples", samples)],
    }
    (samples / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    cluster.kubectl("apply", "--server-side", "-k", str(samples))

    written = {
        doc["metadata"]["name"]: doc
        for path in sorted((MANIFESTS / "samples").glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_all(path.read_text())
    }
    found = get(cluster, "matchingestions", "-n", namespace)["items"]
    stored = {mi["metadata"]["name"]: mi for mi in found}
    assert sorted(stored) == sorted(written)
    for name, sample in written.items():
        assert contains(stored[name]["spec"], sample["spec"]), (name, stored[name]["spec"])
    # What the minimal sample leaves out, the API server fills in from the CRD's defaults.
    minimal = stored["u14-northeast"]["spec"]
    assert minimal["scraper"]["timeZone"] == "UTC"
    assert minimal["scraper"]["suspend"] is False
    assert minimal["broker"]["queueType"] == "quorum"
    assert minimal["broker"]["retry"]["delays"] == ["10s", "1m", "5m"]
    assert minimal["workers"]["maxReplicas"] == 10


# ---- the operator program, with nothing but the chart's permissions ------------------------


def start_operator(
    cluster: ClusterAccess, release: str, namespace: str, state_dir: Path
) -> Service:
    """Run `matchops-operator` here with the release's settings and ServiceAccount."""
    manifest = helm(
        "get", "manifest", release, "--namespace", namespace, kubeconfig=cluster.kubeconfig
    )
    objs = load_all(manifest)
    container = operator_container(objs)
    name = f"{release}-matchops"
    kubeconfig = cluster.service_account_kubeconfig(
        namespace, name, state_dir / "operator.kubeconfig"
    )
    env = env_of(container, namespace)
    env.update(
        PATH=os.environ["PATH"],
        KUBECONFIG=str(kubeconfig),
        MATCHOPS_LOG_FORMAT="plain",
    )
    program = Path(sys.executable).parent / "matchops-operator"
    service = Service("operator", [str(program), "--kubeconfig", str(kubeconfig)], state_dir, env)
    port = int(env["MATCHOPS_LIVENESS_PORT"])
    service.start()
    service.wait_ready(lambda: _healthy(port), timeout=60)
    return service


def _healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return bool(response.status == 200)


def pipeline(cluster: ClusterAccess, namespace: str, name: str, vhost: Vhost) -> None:
    """Secrets and a MatchIngestion with a scraper, in `namespace`."""
    for secret, key, value in (
        ("rabbitmq", "url", vhost.url),
        ("postgres", "dsn", "postgresql://matchops@127.0.0.1:1/matches"),
    ):
        cluster.kubectl(
            "create", "secret", "generic", secret, "-n", namespace, f"--from-literal={key}={value}"
        )
    ingestion = {
        "apiVersion": "matchops.dev/v1alpha1",
        "kind": "MatchIngestion",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scraper": {"image": "registry.example/match-scraper:1.4.0", "schedule": "0 6 * * *"},
            "broker": {
                "secretRef": {"name": "rabbitmq", "key": "url"},
                "queue": f"{name}-{namespace}",
            },
            "database": {"secretRef": {"name": "postgres", "key": "dsn"}},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(ingestion))


def wait_condition(
    cluster: ClusterAccess, service: Service, namespace: str, name: str, condition: str
) -> None:
    """`kubectl wait` for a condition; on timeout, fail with the status and the operator's log."""
    try:
        cluster.kubectl(
            "wait",
            f"matchingestion/{name}",
            "-n",
            namespace,
            f"--for=condition={condition}",
            "--timeout=60s",
            timeout=90,
        )
    except KubectlError as exc:
        status = get(cluster, "matchingestion", name, "-n", namespace).get("status")
        log = tail(service.log_path)
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status, indent=1)}\noperator log:\n{log}"
        ) from exc


def drop_pipelines(cluster: ClusterAccess, pipelines: list[tuple[str, str]]) -> None:
    """Remove test MatchIngestions the operator did not get to finalize."""
    for namespace, name in pipelines:
        if exists(cluster, "matchingestion", name, "-n", namespace):
            cluster.kubectl(
                "patch",
                "matchingestion",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"metadata": {"finalizers": null}}',
            )
            cluster.kubectl("delete", "matchingestion", name, "-n", namespace, "--wait=false")


def refused_requests(service: Service) -> list[str]:
    """Log lines about requests the API server refused (403 Forbidden)."""
    refused = re.compile(r"forbidden", re.IGNORECASE)
    return [line for line in service.log_path.read_text().splitlines() if refused.search(line)]


# kopf pauses every watch while a peering name is given and peering CRDs are absent, even when
# standalone; and in namespaced mode it lists cluster namespaces (retrying for about a minute
# when refused) unless its namespace scanning is off. The operator must pass no peering name
# when standalone and turn scanning off when it serves listed namespaces.
def test_operator_reconciles_with_only_the_namespaced_permissions(
    cluster: ClusterAccess,
    crd_as_found: None,
    namespaces: list[str],
    vhost: Vhost,
    tmp_path: Path,
) -> None:
    ops, served, _ = namespaces
    release = f"run-{_suffix()}"
    helm_install(
        cluster,
        release,
        ops,
        f"watch.namespaces={{{served}}}",
        f"operator.livenessPort={free_port()}",
        "operator.pollInterval=1s",
    )
    service = start_operator(cluster, release, ops, tmp_path)
    try:
        pipeline(cluster, served, "matches", vhost)
        # kstatus: `kubectl wait` reads Ready; the operator got there on the chart's RBAC alone.
        wait_condition(cluster, service, served, "matches", "Ready")
        ingestion = get(cluster, "matchingestion", "matches", "-n", served)
        assert "matchops.dev/finalizer" in ingestion["metadata"]["finalizers"]
        assert ingestion["status"]["observedGeneration"] == ingestion["metadata"]["generation"]
        for child in ("cronjob/matches-scraper", "deployment/matches-worker"):
            owners = get(cluster, child, "-n", served)["metadata"]["ownerReferences"]
            assert [o["name"] for o in owners] == ["matches"]
        events = get(
            cluster, "events", "-n", served, "--field-selector", "involvedObject.name=matches"
        )
        assert {e["reason"] for e in events["items"]} >= {"Ready"}
        # Deleting goes through the finalizer, which the operator may remove.
        cluster.kubectl(
            "delete", "matchingestion", "matches", "-n", served, "--timeout=60s", timeout=90
        )
        assert service.running()
    finally:
        service.stop()
        print(service.log_path.read_text())  # shown by pytest when the test fails
        drop_pipelines(cluster, [(served, "matches")])
        uninstall(cluster, release, ops)
    # Least privilege, and still nothing refused: namespaced mode makes no cluster-wide reads.
    refused = refused_requests(service)
    assert not refused, "\n".join(refused)


def test_cluster_mode_reads_secrets_only_where_bound(
    cluster: ClusterAccess,
    crd_as_found: None,
    namespaces: list[str],
    vhost: Vhost,
    tmp_path: Path,
) -> None:
    ops, served, other = namespaces
    release = f"cwrun-{_suffix()}"
    helm_install(
        cluster,
        release,
        ops,
        "watch.mode=cluster",
        f"rbac.secretNamespaces={{{served}}}",
        f"operator.livenessPort={free_port()}",
        "operator.pollInterval=1s",
    )
    service = start_operator(cluster, release, ops, tmp_path)
    try:
        pipeline(cluster, served, "bound", vhost)
        pipeline(cluster, other, "unbound", vhost)
        wait_condition(cluster, service, served, "bound", "Ready")
        wait_condition(cluster, service, other, "unbound", "Stalled")
        stalled = get(cluster, "matchingestion", "unbound", "-n", other)["status"]["conditions"]
        reasons = {c["type"]: c["reason"] for c in stalled}
        assert reasons["Stalled"] == "SecretForbidden"
        for name, namespace in (("bound", served), ("unbound", other)):
            cluster.kubectl(
                "delete", "matchingestion", name, "-n", namespace, "--timeout=60s", timeout=90
            )
    finally:
        service.stop()
        print(service.log_path.read_text())  # shown by pytest when the test fails
        drop_pipelines(cluster, [(served, "bound"), (other, "unbound")])
        uninstall(cluster, release, ops)
    refused = [line for line in refused_requests(service) if other not in line]
    assert not refused, "\n".join(refused)
