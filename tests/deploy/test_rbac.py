"""Least privilege, read from the rendered chart and kustomize manifests.

The same `expected_access` rows run against the real API server in test_install.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .render import (
    MANIFESTS,
    Access,
    Obj,
    allowed,
    chart,
    expected_access,
    key,
    kustomize,
    of_kind,
)

# (render, operator ServiceAccount (namespace, name), namespaces served (None: all), Secret
# namespaces beyond those)
Setup = tuple[Callable[[], list[Obj]], tuple[str, str], list[str] | None, list[str]]

SETUPS: dict[str, Setup] = {
    "chart-defaults": (lambda: chart(namespace="ops"), ("ops", "matchops"), ["ops"], []),
    "chart-namespaced": (
        lambda: chart({"watch": {"namespaces": ["team-a", "team-b"]}}, namespace="ops"),
        ("ops", "matchops"),
        ["team-a", "team-b"],
        [],
    ),
    "chart-cluster": (
        lambda: chart(
            {"watch": {"mode": "cluster"}, "rbac": {"secretNamespaces": ["team-a", "team-b"]}},
            namespace="ops",
        ),
        ("ops", "matchops"),
        None,
        ["team-a", "team-b"],
    ),
    "chart-peering": (
        lambda: chart({"operator": {"replicas": 2}, "peering": {"enabled": True}}, namespace="ops"),
        ("ops", "matchops"),
        ["ops"],
        [],
    ),
    "kustomize-base": (
        lambda: kustomize(MANIFESTS / "base"),
        ("matchops", "matchops"),
        ["matchops"],
        [],
    ),
    "kustomize-namespaced": (
        lambda: kustomize(MANIFESTS / "overlays" / "namespaced"),
        ("ingest", "matchops"),
        ["ingest"],
        [],
    ),
    "kustomize-cluster-wide": (
        lambda: kustomize(MANIFESTS / "overlays" / "cluster-wide"),
        ("matchops", "matchops"),
        None,
        ["ingest"],
    ),
    "kustomize-local": (
        lambda: kustomize(MANIFESTS / "overlays" / "local"),
        ("ingest", "matchops"),
        ["ingest"],
        [],
    ),
}


@pytest.fixture(params=sorted(SETUPS))
def setup(request: pytest.FixtureRequest) -> tuple[list[Obj], tuple[str, str], Any, Any]:
    render, account, served, secrets = SETUPS[request.param]
    return render(), account, served, secrets


def _rules(objs: list[Obj]) -> list[tuple[Any, dict[str, Any]]]:
    return [(key(o), r) for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]


def test_no_wildcards_anywhere(setup: tuple[list[Obj], Any, Any, Any]) -> None:
    objs = setup[0]
    for where, rule in _rules(objs):
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert "*" not in rule.get(field, []), f"{where} has a wildcard in {field}: {rule}"
            assert not any("*" in item for item in rule.get(field, []) if item != ""), (where, rule)
    for obj in of_kind(objs, "ClusterRole"):
        assert "aggregationRule" not in obj, key(obj)


def test_secrets_are_get_only_and_never_bound_cluster_wide(
    setup: tuple[list[Obj], Any, Any, Any],
) -> None:
    objs = setup[0]
    secret_rules = [(w, r) for w, r in _rules(objs) if "secrets" in r["resources"]]
    assert secret_rules, "the operator must be able to read its Secrets"
    for where, rule in secret_rules:
        assert rule["resources"] == ["secrets"], where
        assert rule["apiGroups"] == [""], where
        assert rule["verbs"] == ["get"], f"{where}: Secrets must be read-only, by name"
    cluster_bound = {o["roleRef"]["name"] for o in of_kind(objs, "ClusterRoleBinding")}
    for (kind, _, name), _rule in secret_rules:
        if kind == "ClusterRole":
            assert name not in cluster_bound, f"ClusterRole {name} grants Secrets cluster-wide"


def test_only_the_operator_service_account_is_bound(
    setup: tuple[list[Obj], tuple[str, str], Any, Any],
) -> None:
    objs, (namespace, name) = setup[0], setup[1]
    for binding in of_kind(objs, "RoleBinding") + of_kind(objs, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        ], key(binding)
    account = (namespace, name)
    deployment = of_kind(objs, "Deployment")[0]
    assert deployment["metadata"]["namespace"] == namespace
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account[1]


def test_effective_permissions(
    setup: tuple[list[Obj], tuple[str, str], list[str] | None, list[str]],
) -> None:
    objs, account, served, secrets = setup
    rows = expected_access(served=served, secret_namespaces=secrets, elsewhere="unrelated")
    wrong = [str(row) for row in rows if allowed(objs, account, row) != row.allowed]
    assert not wrong, f"the operator's ServiceAccount should, but does not: {wrong}"


def test_kopf_peering_permissions_only_with_peering() -> None:
    rows = [("get", "kopfpeerings.kopf.dev"), ("patch", "kopfpeerings.kopf.dev")]
    with_peering = chart({"operator": {"replicas": 2}, "peering": {"enabled": True}})
    without = chart()
    for verb, resource in rows:
        access = Access(verb, resource, "matchops", True)
        assert allowed(with_peering, ("matchops", "matchops"), access)
        assert not allowed(without, ("matchops", "matchops"), access)
