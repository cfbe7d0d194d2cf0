"""The Helm chart: lint, what each mode renders, the operator pod, and what the schema refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from matchops_operator.desired.common import Owner, labels
from matchops_operator.desired.workers import METRICS_PORT_NAME
from matchops_operator.main import parse_args

from .render import (
    CHART,
    REPO,
    RenderError,
    chart,
    env_of,
    helm,
    key,
    of_kind,
    operator_container,
    the,
)

CLUSTER = {"watch": {"mode": "cluster"}, "rbac": {"secretNamespaces": ["ingest"]}}
PEERING = {"operator": {"replicas": 2}, "peering": {"enabled": True, "name": "matchops-peers"}}


@pytest.mark.parametrize(
    "values",
    [{}, CLUSTER, PEERING, {"metrics": {"podMonitor": {"enabled": True}}}],
    ids=["defaults", "cluster", "peering", "podmonitor"],
)
def test_helm_lint_strict_passes(values: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    output = helm("lint", "--strict", str(CHART), "-f", str(path))
    assert "1 chart(s) linted, 0 chart(s) failed" in output


def test_default_install_serves_the_release_namespace_with_namespaced_rbac() -> None:
    objs = chart(namespace="pipelines")
    assert sorted(key(o) for o in objs) == sorted(
        [
            ("ServiceAccount", "pipelines", "matchops"),
            ("CustomResourceDefinition", None, "matchingestions.matchops.dev"),
            ("ClusterRole", None, "matchops-discovery"),
            ("ClusterRoleBinding", None, "matchops-discovery"),
            ("Role", "pipelines", "matchops"),
            ("RoleBinding", "pipelines", "matchops"),
            ("Deployment", "pipelines", "matchops"),
        ]
    )
    env = env_of(operator_container(objs), "pipelines")
    settings, _ = parse_args([], env)
    assert settings.namespaces == ("pipelines",)


def test_namespaced_mode_puts_a_role_in_each_listed_namespace_only() -> None:
    objs = chart({"watch": {"namespaces": ["team-a", "team-b"]}}, namespace="ops")
    roles = {key(o) for o in of_kind(objs, "Role") + of_kind(objs, "RoleBinding")}
    assert roles == {
        ("Role", "team-a", "matchops"),
        ("Role", "team-b", "matchops"),
        ("RoleBinding", "team-a", "matchops"),
        ("RoleBinding", "team-b", "matchops"),
    }
    assert [key(o) for o in of_kind(objs, "ClusterRole")] == [
        ("ClusterRole", None, "matchops-discovery")
    ]
    settings, _ = parse_args([], env_of(operator_container(objs), "ops"))
    assert settings.namespaces == ("team-a", "team-b")


def test_cluster_mode_serves_every_namespace_and_binds_secrets_per_namespace() -> None:
    objs = chart({"watch": {"mode": "cluster"}, "rbac": {"secretNamespaces": ["a", "b"]}})
    assert of_kind(objs, "Role") == []
    bindings = {key(o): o["roleRef"]["name"] for o in of_kind(objs, "RoleBinding")}
    assert bindings == {
        ("RoleBinding", "a", "matchops-secret-reader"): "matchops-secret-reader",
        ("RoleBinding", "b", "matchops-secret-reader"): "matchops-secret-reader",
    }
    cluster_bound = {o["roleRef"]["name"] for o in of_kind(objs, "ClusterRoleBinding")}
    assert cluster_bound == {"matchops", "matchops-discovery"}
    settings, _ = parse_args([], env_of(operator_container(objs), "matchops"))
    assert settings.namespaces == ()


def test_operator_pod_runs_restricted_with_a_liveness_probe_and_resources() -> None:
    objs = chart()
    deployment = the(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "matchops"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(objs)
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}
    assert container["resources"]["limits"] == {"memory": "256Mi"}
    # A writable /tmp is the only writable path.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    probe = container["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings, _ = parse_args([], env_of(container, "matchops"))
    assert settings.liveness_port == ports["health"] == 8080


def test_operator_settings_follow_the_values() -> None:
    objs = chart(
        {
            "image": {"repository": "registry.example/ops/matchops", "tag": "1.2.3"},
            "operator": {
                "pollInterval": "3s",
                "retryMaxDelay": "2m",
                "livenessPort": 9090,
                "logLevel": "debug",
                "logFormat": "plain",
            },
        }
    )
    container = operator_container(objs)
    settings, args = parse_args([], env_of(container, "matchops"))
    assert container["image"] == "registry.example/ops/matchops:1.2.3"
    assert settings.worker_image == container["image"]
    assert settings.poll_interval == 3.0
    assert settings.retry_max_delay == 120.0
    assert settings.liveness_port == 9090
    assert container["ports"][0]["containerPort"] == 9090
    assert settings.standalone is True
    assert settings.image_pull_policy is None
    assert (args.log_level, args.log_format) == ("debug", "plain")


def test_workers_get_the_operator_image_by_default_and_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    plain = operator_container(chart())
    assert plain["image"] == "localhost/matchops:0.1.0"  # the chart's appVersion
    pinned = operator_container(
        chart({"image": {"digest": digest, "tag": "ignored", "childPullPolicy": "Never"}})
    )
    assert pinned["image"] == f"localhost/matchops@{digest}"
    settings, _ = parse_args([], env_of(pinned, "matchops"))
    assert settings.worker_image == pinned["image"]
    assert settings.image_pull_policy == "Never"


def test_every_operator_variable_the_chart_sets_is_one_the_operator_reads() -> None:
    sources = "\n".join(
        path.read_text() for path in (REPO / "operator" / "matchops_operator").rglob("*.py")
    )
    for values in ({}, PEERING, {"image": {"childPullPolicy": "Always"}}):
        names = [v["name"] for v in operator_container(chart(values))["env"]]
        for name in names:
            if name.startswith("MATCHOPS_"):
                assert f'"{name}"' in sources, f"the operator does not read {name}"


def test_peering_allows_replicas_and_renders_peering_objects_and_rbac() -> None:
    namespaced = chart(PEERING, namespace="ops")
    deployment = the(namespaced, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    settings, _ = parse_args([], env_of(operator_container(namespaced), "ops"))
    assert settings.standalone is False
    assert settings.peering_name == "matchops-peers"
    assert [key(o) for o in of_kind(namespaced, "KopfPeering")] == [
        ("KopfPeering", "ops", "matchops-peers")
    ]
    role = the(namespaced, "Role")
    assert {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"],
            "verbs": ["get", "list", "watch", "patch"]} in role["rules"]  # fmt: skip

    clusterwide = chart({**PEERING, **CLUSTER})
    assert [key(o) for o in of_kind(clusterwide, "ClusterKopfPeering")] == [
        ("ClusterKopfPeering", None, "matchops-peers")
    ]
    role = next(
        o for o in of_kind(clusterwide, "ClusterRole") if o["metadata"]["name"] == "matchops"
    )
    assert any(r["resources"] == ["clusterkopfpeerings"] for r in role["rules"])


def test_without_peering_no_peering_permissions_or_objects() -> None:
    for values in ({}, CLUSTER):
        objs = chart(values)
        assert not of_kind(objs, "KopfPeering")
        assert not of_kind(objs, "ClusterKopfPeering")
        groups = {g for o in objs for r in o.get("rules", []) for g in r["apiGroups"]}
        assert "kopf.dev" not in groups


def test_pod_monitor_scrapes_the_worker_pods_of_the_served_namespaces() -> None:
    assert of_kind(chart(), "PodMonitor") == []
    monitor = the(
        chart(
            {
                "watch": {"namespaces": ["a", "b"]},
                "metrics": {"podMonitor": {"enabled": True, "labels": {"release": "prom"}}},
            }
        ),
        "PodMonitor",
    )
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}
    # The labels and port name the operator puts on worker pods (desired/workers.py).
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "matchops-operator",
        "app.kubernetes.io/component": "worker",
    }
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    clusterwide = the(
        chart({**CLUSTER, "metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor"
    )
    assert clusterwide["spec"]["namespaceSelector"] == {"any": True}


def test_worker_pod_labels_match_the_pod_monitor_selector() -> None:
    worker = labels(Owner("pipeline", "ns", "uid"), "worker")
    selector = the(chart({"metrics": {"podMonitor": {"enabled": True}}}), "PodMonitor")["spec"]
    assert selector["selector"]["matchLabels"].items() <= worker.items()
    assert selector["podMetricsEndpoints"][0]["port"] == METRICS_PORT_NAME


def test_rbac_and_service_account_can_be_left_to_the_user() -> None:
    objs = chart({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}})
    kinds = {o["kind"] for o in objs}
    assert kinds == {"CustomResourceDefinition", "Deployment"}
    assert the(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# ---- values.schema.json --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"watch": {"mode": "everywhere"}}, "at '/watch/mode': value must be one of"),
        ({"watch": {"namespaces": ["Team_A"]}}, "at '/watch/namespaces/0'"),
        ({"watch": {"namespaces": ["a", "a"]}}, "at '/watch/namespaces'"),
        (
            {"watch": {"mode": "cluster", "namespaces": ["a"]}},
            "at '/watch/namespaces': maxItems",
        ),
        ({"operator": {"replicas": 2}}, "at '/operator/replicas': maximum: got 2, want 1"),
        ({"operator": {"pollInterval": "10"}}, "at '/operator/pollInterval'"),
        ({"operator": {"pollInterval": 10}}, "at '/operator/pollInterval'"),
        ({"operator": {"livenessPort": 80}}, "at '/operator/livenessPort': minimum"),
        ({"operator": {"logLevel": "verbose"}}, "at '/operator/logLevel'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"image": {"repository": "matchops:1.0"}}, "at '/image/repository'"),
        ({"image": {"digest": "sha256:1234"}}, "at '/image/digest'"),
        ({"resources": {"limits": {"memory": "lots"}}}, "at '/resources/limits/memory'"),
        ({"rbac": {"secretNamespaces": "ingest"}}, "at '/rbac/secretNamespaces'"),
        ({"watchNamespaces": ["a"]}, "additional properties 'watchNamespaces' not allowed"),
        ({"operator": {"replica": 1}}, "additional properties 'replica' not allowed"),
    ],
)
def test_schema_refuses_bad_values_naming_the_value(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError) as refused:
        chart(values)
    assert "values don't meet the specifications of the schema" in str(refused.value)
    assert message in str(refused.value)


def test_service_account_name_is_required_when_not_created() -> None:
    with pytest.raises(RenderError, match=r"serviceAccount\.name is required"):
        chart({"serviceAccount": {"create": False}})


def test_values_file_has_a_default_for_every_key_and_the_schema_describes_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], values: dict[str, Any], path: str) -> None:
        for name, sub in node.get("properties", {}).items():
            if name == "global":
                continue
            assert name in values, f"values.yaml has no default for {path}{name}"
            if sub.get("type") != "object":
                assert sub.get("description"), f"{path}{name} has no description"
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, values[name], f"{path}{name}.")

    walk(schema, defaults, "")


def test_install_docs_describe_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    docs = (REPO / "docs" / "install.md").read_text()

    def leaves(node: dict[str, Any], path: str) -> list[str]:
        found: list[str] = []
        for name, sub in node.get("properties", {}).items():
            if name == "global":
                continue
            if "properties" in sub:
                found += leaves(sub, f"{path}{name}.")
            else:
                found.append(f"{path}{name}")
        return found

    missing = [value for value in leaves(schema, "") if f"`{value}`" not in docs]
    assert not missing, f"docs/install.md does not describe {missing}"
