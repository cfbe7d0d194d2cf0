"""One test's namespace on the local cluster, and the MatchIngestions in it, via kubectl.

For the operator and fault tests, which run the operator on this machine against the session's
cluster (its node may or may not have started for other tests: they never wait for pods), and
for the node tests: they apply manifests and samples with changes, create Secrets, and read back
conditions and Events. (End-to-end runs with the operator in a pod go through `pipeline`.)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from matchops_devenv import pipeline
from matchops_devenv.access import ClusterAccess
from matchops_devenv.toolchain import REPO_ROOT
from matchops_devenv.waiting import wait_for

CRD = REPO_ROOT / "crds" / "matchops.dev_matchingestions.yaml"


@dataclass(frozen=True)
class Namespace:
    """One test's namespace on the test cluster."""

    cluster: ClusterAccess
    name: str

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60.0) -> str:
        return self.cluster.kubectl("-n", self.name, *args, input=input, timeout=timeout).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, manifest: dict[str, Any], *flags: str) -> str:
        manifest = copy.deepcopy(manifest)
        manifest["metadata"]["namespace"] = self.name
        return self.kubectl("apply", *flags, "-f", "-", input=yaml.safe_dump(manifest))

    def secret(self, name: str, data: Mapping[str, str]) -> None:
        literals = [f"--from-literal={key}={value}" for key, value in data.items()]
        self.kubectl("create", "secret", "generic", name, *literals)

    def ingestion(self, resource: str) -> dict[str, Any]:
        found: dict[str, Any] = self.get("matchingestion", resource)
        return found

    def condition(self, resource: str, kind: str) -> dict[str, Any] | None:
        conditions = self.ingestion(resource).get("status", {}).get("conditions", [])
        found = [c for c in conditions if c["type"] == kind]
        return found[0] if found else None

    def wait_condition(
        self, resource: str, kind: str, status: str, reason: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            found = self.condition(resource, kind)
            if found and found["status"] == status and reason in (None, found["reason"]):
                return found
            return None

        return wait_for(check, f"{kind}={status} ({reason}) on {resource}", timeout)

    def events(self, resource: str) -> list[dict[str, Any]]:
        """Events about `resource`, oldest first."""
        items: list[dict[str, Any]] = self.get(
            "events", "--field-selector", f"involvedObject.name={resource}"
        )["items"]
        # resourceVersion orders them as they were created (timestamps have 1 s precision).
        return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))


def sample(name: str, **spec_changes: Any) -> dict[str, Any]:
    """A manifest from manifests/samples with `a__b=value` changes to its spec."""
    manifest = pipeline.sample(name)
    for path, value in spec_changes.items():
        node = manifest["spec"]
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return manifest


def install_crd(cluster: ClusterAccess, path: Path, name: str) -> None:
    """Apply a CRD and wait until the API server, and kubectl's discovery, serve it."""
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    group = name.split(".", 1)[1]
    # Refresh kubectl's discovery cache, which an earlier call may have filled without the CRD.
    wait_for(
        lambda: (
            name.split(".")[0]
            in cluster.kubectl("api-resources", f"--api-group={group}", "--cached=false").stdout
        ),
        f"the API server to serve {name}",
    )
