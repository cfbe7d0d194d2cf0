"""The real `matchops-operator` program against the test cluster, and what the tests read back.

The operator runs as a process of its own, the way its Deployment runs it, so a test can
SIGKILL it mid-reconcile or run two of them side by side.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from matchops_devenv.access import ClusterAccess
from matchops_devenv.procs import Service

ROOT = Path(__file__).parents[2]
CRD = ROOT / "crds" / "matchops.dev_matchingestions.yaml"
SAMPLES = ROOT / "manifests" / "samples"
WORKER_IMAGE = "matchops:test"
T = TypeVar("T")
# What kopf logs once it has logged in to the API server.
STARTED = "Initial authentication has finished."


def operator_command() -> list[str]:
    script = Path(sys.executable).with_name("matchops-operator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "matchops_operator.main"]


class OperatorProcess:
    """One `matchops-operator` process serving one namespace, with its own log."""

    def __init__(
        self,
        state_dir: Path,
        cluster: ClusterAccess,
        namespace: str,
        name: str,
        *flags: str,
        poll: str = "1s",
    ) -> None:
        command = [
            *operator_command(),
            "--namespace",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--poll-interval",
            poll,
            "--worker-image",
            WORKER_IMAGE,
            "--image-pull-policy",
            "IfNotPresent",
            "--liveness-port",
            "0",
            "--retry-max-delay",
            "2s",
            *flags,
        ]
        # The pod name, as Kubernetes sets it: Events say which replica acted.
        env = {**os.environ, "HOSTNAME": name}
        self.name = name
        self.service = Service(name, command, state_dir, env=env)

    def start(self) -> OperatorProcess:
        self.service.start()
        return self

    def wait_started(self, timeout: float = 60) -> None:
        """Wait until the operator has logged in, right before it lists and handles resources."""
        wait_for(lambda: STARTED in self.log, f"{self.name} to start", timeout, interval=0.01)

    def kill(self) -> None:
        self.service.stop(timeout=0, sig=signal.SIGKILL)

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code."""
        process = self.service.process
        if process is None:
            return None
        self.service.stop(timeout=30)
        return process.returncode

    def running(self) -> bool:
        return self.service.running()

    @property
    def log(self) -> str:
        try:
            return self.service.log_path.read_text(errors="replace")
        except OSError:
            return ""


def wait_for(
    check: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.25
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


@dataclass(frozen=True)
class Namespace:
    """One test's namespace on the test cluster."""

    cluster: ClusterAccess
    name: str

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl("-n", self.name, *args, input=input).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, manifest: dict[str, Any], *flags: str) -> str:
        manifest = copy.deepcopy(manifest)
        manifest["metadata"]["namespace"] = self.name
        return self.kubectl("apply", *flags, "-f", "-", input=yaml.safe_dump(manifest))

    def secret(self, name: str, data: Mapping[str, str]) -> None:
        literals = [f"--from-literal={key}={value}" for key, value in data.items()]
        self.kubectl("create", "secret", "generic", name, *literals)

    def condition(self, resource: str, kind: str) -> dict[str, Any] | None:
        conditions = self.get("matchingestion", resource).get("status", {}).get("conditions", [])
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
        items: list[dict[str, Any]] = self.get(
            "events", "--field-selector", f"involvedObject.name={resource}"
        )["items"]
        return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))


def sample(name: str, **spec_changes: Any) -> dict[str, Any]:
    """A manifest from manifests/samples with `a__b=value` changes to its spec."""
    manifest: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    for path, value in spec_changes.items():
        node = manifest["spec"]
        *parents, leaf = path.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return manifest


def install_crd(cluster: ClusterAccess, path: Path, name: str) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    group = name.split(".", 1)[1]
    wait_for(
        lambda: (
            name.split(".")[0]
            in cluster.kubectl("api-resources", f"--api-group={group}", "--cached=false").stdout
        ),
        f"the API server to serve {name}",
    )
