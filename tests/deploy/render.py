"""Render the Helm chart and the kustomize manifests, and read RBAC out of the result.

`Access` rows say what the operator's ServiceAccount may or may not do; `allowed` answers them
from rendered objects the way the API server's RBAC authorizer does, so the same rows are
checked offline here and with `kubectl auth can-i` against the real API server.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from matchops_devenv import toolchain

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "matchops"
MANIFESTS = REPO / "manifests"
CRDS = REPO / "crds"
CRD_COPIES = (CHART / "files" / "crds", MANIFESTS / "crd")

Obj = dict[str, Any]
Key = tuple[str, str | None, str]


class RenderError(RuntimeError):
    """helm or kubectl failed; the message carries their stderr."""


def _run(program: str, args: Sequence[str], kubeconfig: Path | None = None) -> str:
    env = None if kubeconfig is None else dict(os.environ, KUBECONFIG=str(kubeconfig))
    result = subprocess.run(
        [str(toolchain.program(program)), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"{program} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def helm(*args: str, kubeconfig: Path | None = None) -> str:
    """Run helm, against the cluster of `kubeconfig` if given; RenderError with its stderr on
    failure."""
    return _run("helm", args, kubeconfig)


def load_all(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.lru_cache(maxsize=64)
def _helm_template(release: str, namespace: str, values_json: str) -> tuple[Obj, ...]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        values.write(values_json)
        values.flush()
        text = helm("template", release, str(CHART), "--namespace", namespace, "-f", values.name)
    return tuple(load_all(text))


def chart(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "matchops",
    namespace: str = "matchops",
) -> list[Obj]:
    """`helm template` of the chart with these values (JSON is YAML)."""
    rendered = _helm_template(release, namespace, json.dumps(values or {}, sort_keys=True))
    return copy.deepcopy(list(rendered))


@functools.lru_cache(maxsize=16)
def _kustomize(path: str) -> tuple[Obj, ...]:
    return tuple(load_all(_run("kubectl", ["kustomize", path])))


def kustomize(path: Path) -> list[Obj]:
    """`kubectl kustomize` of a kustomization directory."""
    return copy.deepcopy(list(_kustomize(str(path))))


def key(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return (str(obj["kind"]), meta.get("namespace"), str(meta["name"]))


def by_key(objs: Iterable[Obj]) -> dict[Key, Obj]:
    return {key(obj): obj for obj in objs}


def of_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objs if obj["kind"] == kind]


def the(objs: Iterable[Obj], kind: str) -> Obj:
    """The one object of `kind`."""
    found = of_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {[key(o) for o in found]}"
    return found[0]


def operator_container(objs: Iterable[Obj]) -> Obj:
    containers = the(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


def env_of(container: Mapping[str, Any], namespace: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it (fieldRef namespace resolved)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in ("metadata.namespace", "metadata.name"), var
            env[var["name"]] = namespace if path == "metadata.namespace" else "operator-pod"
        else:
            env[var["name"]] = str(var.get("value", ""))
    return env


def normalized(obj: Mapping[str, Any]) -> Obj:
    """The object without labels and annotations, which each tool stamps its own way."""
    result = copy.deepcopy(dict(obj))
    meta = result["metadata"]
    meta.pop("labels", None)
    meta.pop("annotations", None)
    template = result.get("spec", {}).get("template")
    if isinstance(template, dict):
        template.pop("metadata", None)
    return result


# ---- RBAC -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """One request the operator's ServiceAccount may (`allowed`) or may not make."""

    verb: str
    resource: str  # plural, with its group after a dot: "deployments.apps", "secrets"
    namespace: str | None  # None: cluster-wide (all namespaces, or a cluster-scoped resource)
    allowed: bool
    subresource: str = ""

    @property
    def group(self) -> str:
        return self.resource.partition(".")[2]

    @property
    def plural(self) -> str:
        return self.resource.partition(".")[0]

    def kubectl_args(self) -> list[str]:
        args = ["auth", "can-i", self.verb, self.resource]
        if self.subresource:
            args.append(f"--subresource={self.subresource}")
        args += ["--all-namespaces"] if self.namespace is None else ["-n", self.namespace]
        return args

    def __str__(self) -> str:
        where = "cluster-wide" if self.namespace is None else f"in {self.namespace}"
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{'may' if self.allowed else 'may not'} {self.verb} {self.resource}{sub} {where}"


def _rule_matches(rule: Mapping[str, Any], access: Access) -> bool:
    resource = access.plural + (f"/{access.subresource}" if access.subresource else "")
    return (
        access.verb in rule.get("verbs", [])
        and access.group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and not rule.get("resourceNames")
    )


def _bound(binding: Mapping[str, Any], account: tuple[str, str]) -> bool:
    namespace, name = account
    return any(
        s.get("kind") == "ServiceAccount"
        and s.get("name") == name
        and s.get("namespace") == namespace
        for s in binding.get("subjects", [])
    )


def allowed(objs: Sequence[Obj], account: tuple[str, str], access: Access) -> bool:
    """Whether the rendered RBAC lets ServiceAccount `account` (namespace, name) do `access`."""
    roles = by_key(objs)
    for binding in of_kind(objs, "ClusterRoleBinding") + of_kind(objs, "RoleBinding"):
        if not _bound(binding, account):
            continue
        scope = binding["metadata"].get("namespace")
        if scope is not None and access.namespace != scope:
            continue
        ref = binding["roleRef"]
        role_namespace = scope if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_namespace, ref["name"]))
        assert role is not None, f"{key(binding)} refers to missing {ref}"
        if any(_rule_matches(rule, access) for rule in role.get("rules", [])):
            return True
    return False


def rules_of(objs: Iterable[Obj]) -> dict[Key, list[Obj]]:
    return {key(o): o.get("rules", []) for o in objs if o["kind"] in ("Role", "ClusterRole")}


def expected_access(
    *,
    served: Sequence[str] | None,
    secret_namespaces: Sequence[str],
    elsewhere: str,
) -> list[Access]:
    """What the operator may and may not do, given the namespaces it serves (None: all)."""
    home = served[0] if served else secret_namespaces[0]
    rows = [
        # Its pipelines, where it serves them.
        Access("list", "matchingestions.matchops.dev", home, True),
        Access("watch", "matchingestions.matchops.dev", home, True),
        Access("patch", "matchingestions.matchops.dev", home, True),
        Access("patch", "matchingestions.matchops.dev", home, True, "status"),
        Access("update", "matchingestions.matchops.dev", home, True, "finalizers"),
        Access("create", "matchingestions.matchops.dev", home, False),
        Access("delete", "matchingestions.matchops.dev", home, False),
        Access("create", "deployments.apps", home, True),
        Access("patch", "deployments.apps", home, True),
        Access("delete", "deployments.apps", home, True),
        Access("create", "cronjobs.batch", home, True),
        Access("delete", "cronjobs.batch", home, True),
        Access("create", "events", home, True),
        Access("create", "pods", home, False),
        Access("create", "jobs.batch", home, False),
        Access("patch", "deployments.apps", home, False, "scale"),
        # Secrets: read one by name where allowed, never list, watch or write; never cluster-wide.
        Access("get", "secrets", home, True),
        Access("list", "secrets", home, False),
        Access("watch", "secrets", home, False),
        Access("create", "secrets", home, False),
        Access("get", "secrets", elsewhere, False),
        Access("get", "secrets", None, False),
        Access("list", "secrets", None, False),
        # kopf's discovery of the CRD; nothing else cluster-scoped.
        Access("list", "customresourcedefinitions.apiextensions.k8s.io", None, True),
        Access("watch", "customresourcedefinitions.apiextensions.k8s.io", None, True),
        Access("delete", "customresourcedefinitions.apiextensions.k8s.io", None, False),
        Access("delete", "namespaces", None, False),
        Access("list", "namespaces", None, False),
        Access("create", "clusterroles.rbac.authorization.k8s.io", None, False),
        Access("create", "rolebindings.rbac.authorization.k8s.io", home, False),
        Access("get", "configmaps", home, False),
    ]
    rows += [Access("get", "secrets", namespace, True) for namespace in secret_namespaces]
    if served is None:
        rows += [
            Access("list", "matchingestions.matchops.dev", None, True),
            Access("watch", "matchingestions.matchops.dev", None, True),
            Access("patch", "deployments.apps", elsewhere, True),
        ]
    else:
        rows += [Access("get", "secrets", namespace, True) for namespace in served]
        rows += [
            Access("list", "matchingestions.matchops.dev", None, False),
            Access("list", "matchingestions.matchops.dev", elsewhere, False),
            Access("patch", "deployments.apps", elsewhere, False),
        ]
    return rows
