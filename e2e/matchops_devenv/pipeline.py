"""The whole pipeline on a cluster, step by step, for the end-to-end tests and `make demo`.

The operator is installed with the Helm chart and runs as a pod; a `MatchIngestion` and its
Secrets are applied with kubectl; the scraper CronJob is run at once as a Job; everything is
then read back the way a person would: `kubectl get`, `kubectl describe`, Events. Both the
tests and the demo drive these same steps, on the local cluster's node or on any cluster a
`Target` describes (kind, for users with Docker).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from matchops_operator.main import HANDLED_ANNOTATION

from matchops_devenv.access import ClusterAccess, KubectlError
from matchops_devenv.outcome import stored_count
from matchops_devenv.toolchain import REPO_ROOT

CHART = REPO_ROOT / "charts" / "matchops"
SAMPLES = REPO_ROOT / "manifests" / "samples"
CRD = "customresourcedefinition/matchingestions.matchops.dev"
API_VERSION = "matchops.dev/v1alpha1"
INGESTION_LABEL = "matchops.dev/ingestion"
FIELD_MANAGER = "matchops-e2e"
T = TypeVar("T")


class PipelineError(AssertionError):
    """A step did not reach its goal in time; the message carries what the cluster showed."""


def wait_for(
    check: Callable[[], T | None],
    what: str,
    timeout: float,
    diagnose: Callable[[], str] | None = None,
    interval: float = 0.5,
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            details = f"\n{diagnose()}" if diagnose else ""
            raise PipelineError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}{details}"
            )
        time.sleep(interval)


@dataclass(frozen=True)
class Target:
    """A cluster to run pipelines on: its access, the image, and how pods reach this machine.

    `reachable` turns the URL of a service on this machine (RabbitMQ, PostgreSQL) into the URL
    a pod dials; `image` is the project image, already present on the cluster's nodes.
    """

    access: ClusterAccess
    reachable: Callable[[str], str]
    helm_path: Path
    image: str
    pull_policy: str = "Never"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return self.access.kubectl(*args, input=input, check=check, timeout=timeout)

    def helm(self, *args: str, timeout: float = 300.0) -> str:
        """Run helm against the cluster; fail with its error output."""
        result = subprocess.run(
            [str(self.helm_path), *args],
            env=dict(os.environ, KUBECONFIG=str(self.access.kubeconfig)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise PipelineError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def exists(self, *args: str) -> bool:
        found = self.kubectl("get", *args, "--ignore-not-found", "-o", "name").stdout
        return found.strip() != ""


def split_image(image: str) -> tuple[str, str]:
    """`registry/name:tag` as the chart's `image.repository` and `image.tag`."""
    repository, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:
        return image, "latest"
    return repository, tag


@dataclass(frozen=True)
class Operator:
    """An operator release installed with the Helm chart."""

    target: Target
    release: str
    namespace: str

    @property
    def deployment(self) -> str:
        """The chart's full name: the release, suffixed with `-matchops` unless it has it."""
        return self.release if "matchops" in self.release else f"{self.release}-matchops"

    def log(self, lines: int = 60) -> str:
        result = self.target.kubectl(
            "logs",
            f"deployment/{self.deployment}",
            "-n",
            self.namespace,
            f"--tail={lines}",
            check=False,
        )
        return result.stdout or result.stderr

    def uninstall(self) -> None:
        self.target.helm("uninstall", self.release, "--namespace", self.namespace, "--wait")


def install_operator(
    target: Target,
    namespace: str,
    release: str = "matchops",
    poll_interval: str = "1s",
    values: Mapping[str, str] | None = None,
) -> Operator:
    """`helm install` the chart into `namespace`, serving it, and wait for the operator pod.

    A CRD already in the cluster (installed with kubectl or kustomize, or kept by an
    uninstalled release) stays as it is and the chart leaves it alone (`crds.install=false`).
    """
    repository, tag = split_image(target.image)
    settings = {
        "image.repository": repository,
        "image.tag": tag,
        "image.pullPolicy": target.pull_policy,
        "image.childPullPolicy": target.pull_policy,
        "operator.pollInterval": poll_interval,
        "operator.retryMaxDelay": "10s",
        "operator.logFormat": "plain",
        **(values or {}),
    }
    if target.exists(CRD):
        settings["crds.install"] = "false"
    args = ["install", release, str(CHART), "--namespace", namespace, "--create-namespace"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    target.helm(*args, "--wait", "--timeout", "180s")
    operator = Operator(target, release, namespace)
    # The chart's pod has no readiness probe: Ready means the process runs, so wait for it to
    # serve MatchIngestions before anyone applies one.
    target.kubectl("wait", "--for=condition=Established", CRD, "--timeout=60s", timeout=90)
    wait_for(
        lambda: (
            "matchingestions"
            in target.kubectl("api-resources", "--api-group=matchops.dev", "--cached=false").stdout
        ),
        "the API server to serve matchingestions",
        timeout=60,
    )
    return operator


@dataclass
class Pipeline:
    """One MatchIngestion, its Secrets and children, looked at through kubectl."""

    target: Target
    namespace: str
    name: str
    operator: Operator | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def broker_secret(self) -> str:
        return f"{self.name}-broker"

    @property
    def database_secret(self) -> str:
        return f"{self.name}-database"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> str:
        result = self.target.kubectl(
            "-n", self.namespace, *args, input=input, check=check, timeout=timeout
        )
        return result.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    # --- applying ---------------------------------------------------------------------------

    def create_secrets(self, broker_url: str, dsn: str, management_url: str | None = None) -> None:
        """The broker and database Secrets, with URLs pods can dial."""
        reach = self.target.reachable
        broker = [f"--from-literal=url={reach(broker_url)}"]
        if management_url is not None:
            broker.append(f"--from-literal=management-url={reach(management_url)}")
        self.kubectl("create", "secret", "generic", self.broker_secret, *broker)
        self.kubectl(
            "create", "secret", "generic", self.database_secret, f"--from-literal=dsn={reach(dsn)}"
        )

    def bind(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """`manifest` named and placed as this pipeline, its Secret references pointing at ours."""
        bound = copy.deepcopy(dict(manifest))
        bound["metadata"] = {**bound.get("metadata", {}), "name": self.name}
        bound["metadata"]["namespace"] = self.namespace
        spec = bound["spec"]
        spec["broker"]["secretRef"] = {"name": self.broker_secret, "key": "url"}
        if "managementSecretRef" in spec["broker"]:
            spec["broker"]["managementSecretRef"] = {
                "name": self.broker_secret,
                "key": "management-url",
            }
        spec["database"] = {"secretRef": {"name": self.database_secret, "key": "dsn"}}
        return bound

    def apply(self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> str:
        """Server-side apply of the MatchIngestion, as a GitOps tool does."""
        self.manifest = self.bind(manifest)
        return self.kubectl(
            "apply",
            "--server-side",
            f"--field-manager={field_manager}",
            "-f",
            "-",
            input=yaml.safe_dump(self.manifest),
        )

    def delete(self, timeout: float = 60.0) -> None:
        """Delete the MatchIngestion and wait for the operator's finalizer to let it go."""
        self.kubectl(
            "delete",
            "matchingestion",
            self.name,
            "--ignore-not-found",
            "--wait=true",
            f"--timeout={timeout:.0f}s",
            timeout=timeout + 30,
        )

    # --- reading ----------------------------------------------------------------------------

    def ingestion(self) -> dict[str, Any]:
        found: dict[str, Any] = self.get("matchingestion", self.name)
        return found

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.ingestion().get("status", {})
        return status

    def condition(self, kind: str) -> dict[str, Any] | None:
        for condition in self.status().get("conditions", []):
            if condition["type"] == kind:
                found: dict[str, Any] = condition
                return found
        return None

    def wait(self, condition: str = "Ready", timeout: float = 120.0) -> None:
        """`kubectl wait --for=condition=...` on the MatchIngestion, as GitOps tooling does."""
        try:
            self.kubectl(
                "wait",
                f"matchingestion/{self.name}",
                f"--for=condition={condition}",
                f"--timeout={timeout:.0f}s",
                timeout=timeout + 30,
            )
        except KubectlError as error:
            raise PipelineError(f"{error}\n{self.diagnose()}") from error

    def wait_handled(self, timeout: float = 60.0) -> None:
        """Wait until the operator has recorded its first handling of the MatchIngestion.

        The operator sets `Ready` while it handles the resource and records the handling in one
        more write after it; a reader that compares two reads (`kubectl diff`) would catch that
        write in between.
        """

        def handled() -> bool:
            annotations = self.ingestion()["metadata"].get("annotations", {})
            return HANDLED_ANNOTATION in annotations

        wait_for(handled, f"the operator's {HANDLED_ANNOTATION}", timeout, self.diagnose)

    def events(self) -> list[dict[str, Any]]:
        """Events about the MatchIngestion, oldest first."""
        items: list[dict[str, Any]] = self.get(
            "events", "--field-selector", f"involvedObject.name={self.name}"
        )["items"]
        # resourceVersion orders them as they were recorded (timestamps have 1 s precision).
        return sorted(items, key=lambda event: int(event["metadata"]["resourceVersion"]))

    def scaled(self) -> list[str]:
        """The messages of the operator's `Scaled` Events, oldest first."""
        return [event["message"] for event in self.events() if event["reason"] == "Scaled"]

    def workers(self) -> tuple[int, int]:
        """The worker Deployment's desired and ready replicas."""
        deployment = self.get("deployment", f"{self.name}-worker")
        desired = int(deployment["spec"].get("replicas", 0))
        return desired, int(deployment.get("status", {}).get("readyReplicas", 0))

    def pods(self, component: str) -> list[dict[str, Any]]:
        """The pods of a component (`worker`, `scraper`) of this pipeline."""
        selector = f"{INGESTION_LABEL}={self.name},app.kubernetes.io/component={component}"
        items: list[dict[str, Any]] = self.get("pods", "-l", selector)["items"]
        return items

    def ready_pods(self, component: str) -> list[str]:
        """The names of a component's pods that are Ready."""
        return [
            pod["metadata"]["name"]
            for pod in self.pods(component)
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", [])
            )
        ]

    def follow_log(self, pod: str) -> subprocess.Popen[str]:
        """`kubectl logs --follow` of a running pod: its output ends when the container exits,
        so it holds what the pod said last even once the pod is gone."""
        access = self.target.access
        return subprocess.Popen(
            [str(access.kubectl_path), "-n", self.namespace, "logs", "--follow", pod],
            env=dict(os.environ, KUBECONFIG=str(access.kubeconfig)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def table(self, *args: str) -> str:
        """`kubectl get mi NAME`: the columns a person reads first."""
        return self.kubectl("get", "matchingestion", self.name, *args)

    def describe(self) -> str:
        return self.kubectl("describe", "matchingestion", self.name)

    def diagnose(self) -> str:
        """What to look at when a step does not finish: status, Events, pods, operator log."""
        parts = []
        try:
            parts.append("status: " + json.dumps(self.status(), indent=1))
            parts.append(
                "events:\n"
                + "\n".join(f"  {e['type']} {e['reason']}: {e['message']}" for e in self.events())
            )
            parts.append("pods:\n" + self.kubectl("get", "pods", "-o", "wide", check=False))
        except (KubectlError, ValueError) as error:
            parts.append(f"(cluster unreadable: {error})")
        if self.operator is not None:
            parts.append("operator log:\n" + self.operator.log())
        return "\n".join(parts)

    # --- the scraper ------------------------------------------------------------------------

    def start_scraper(self, job: str) -> None:
        """Run the scraper CronJob now, as Job `job` (what `kubectl create job --from` does)."""
        wait_for(
            lambda: self.target.exists("cronjob", f"{self.name}-scraper", "-n", self.namespace),
            f"the operator to create cronjob/{self.name}-scraper",
            timeout=60,
            diagnose=self.diagnose,
        )
        self.kubectl("create", "job", job, f"--from=cronjob/{self.name}-scraper")

    def finish_scraper(self, job: str, timeout: float = 180.0) -> str:
        """Wait for the scraper Job to succeed; returns the last log line of its pod that
        succeeded (what it published). A Job may take more than one pod to get there."""

        def finished() -> str | None:
            conditions = self.get("job", job).get("status", {}).get("conditions", [])
            done = {c["type"] for c in conditions if c["status"] == "True"}
            return next(iter(done & {"Complete", "Failed"}), None)

        outcome = wait_for(finished, f"job/{job} to finish", timeout, diagnose=self.diagnose)
        pods = self.get("pods", "-l", f"job-name={job}")["items"]
        logs = {
            (pod["metadata"]["name"], pod.get("status", {}).get("phase")): self.kubectl(
                "logs", pod["metadata"]["name"], "--tail=40", check=False
            ).strip()
            for pod in pods
        }
        succeeded = [log for (_, phase), log in logs.items() if phase == "Succeeded"]
        if outcome != "Complete" or not succeeded:
            said = "\n".join(f"pod {name} ({phase}):\n{log}" for (name, phase), log in logs.items())
            raise PipelineError(f"the scraper job/{job} failed:\n{said}\n{self.diagnose()}")
        return succeeded[0].splitlines()[-1] if succeeded[0] else ""


@dataclass(frozen=True)
class Snapshot:
    """One look at a running pipeline: rows stored, what its status says, worker replicas."""

    stored: int
    status: Mapping[str, Any]
    desired: int
    ready: int

    @property
    def backlog(self) -> Mapping[str, Any]:
        backlog: Mapping[str, Any] = self.status.get("backlog", {})
        return backlog

    @property
    def consumers(self) -> int:
        """Consumers on the queue at the operator's last poll: workers that really serve."""
        return int(self.backlog.get("consumers", 0))

    @property
    def drained(self) -> bool:
        """The operator's last poll saw no message waiting or held by a worker."""
        return self.backlog.get("ready") == self.backlog.get("unacked") == 0

    @property
    def scaled_to_zero(self) -> bool:
        """No worker asked for or ready, in the Deployment and in the operator's status."""
        reported = self.status.get("workers", {})
        return self.desired == self.ready == 0 and reported.get("summary") == "0/0"


@dataclass
class Watch:
    """Follows a pipeline while it works: the peak of its workers and the Events as they come."""

    pipeline: Pipeline
    dsn: str
    peak_desired: int = 0
    peak_ready: int = 0
    # Consumers on the queue, as the operator's polls saw them: workers that really served.
    peak_consumers: int = 0
    seen: set[str] = field(default_factory=set)

    def look(self) -> Snapshot:
        desired, ready = self.pipeline.workers()
        snapshot = Snapshot(stored_count(self.dsn), self.pipeline.status(), desired, ready)
        self.peak_desired = max(self.peak_desired, desired)
        self.peak_ready = max(self.peak_ready, ready)
        self.peak_consumers = max(self.peak_consumers, snapshot.consumers)
        return snapshot

    def new_events(self) -> list[dict[str, Any]]:
        """Events about the MatchIngestion not returned before, oldest first."""
        fresh = [e for e in self.pipeline.events() if e["metadata"]["uid"] not in self.seen]
        self.seen.update(e["metadata"]["uid"] for e in fresh)
        return fresh

    def until(
        self,
        goal: Callable[[Snapshot], bool],
        what: str,
        timeout: float,
        report: Callable[[Snapshot, list[dict[str, Any]]], None] | None = None,
    ) -> Snapshot:
        """Look until `goal` holds; `report` hears of each look, with the Events since the last."""

        def reached() -> Snapshot | None:
            snapshot = self.look()
            if report is not None:
                report(snapshot, self.new_events())
            return snapshot if goal(snapshot) else None

        return wait_for(reached, what, timeout, self.pipeline.diagnose)


def sample(name: str) -> dict[str, Any]:
    """A shipped sample from manifests/samples/."""
    loaded: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return loaded


def scraped_ingestion(
    image: str,
    scraper_args: list[str],
    *,
    exchange: str,
    queue: str,
    routing_keys: list[str],
    max_replicas: int,
    target_backlog_per_replica: int,
    scale_down_delay_seconds: int,
    retry_delays: tuple[str, ...] = ("1s", "5s"),
    workers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A MatchIngestion whose scraper is the project image's sample producer; `workers` adds
    fields of `spec.workers` (prefetch, batchSize, ...).

    The scraper runs daily, twelve hours from now: never by itself during a run, which starts
    it with `start_scraper`.
    """
    hour = (time.gmtime().tm_hour + 12) % 24
    return {
        "apiVersion": API_VERSION,
        "kind": "MatchIngestion",
        "metadata": {},
        "spec": {
            "scraper": {"image": image, "schedule": f"0 {hour} * * *", "args": scraper_args},
            "broker": {
                "secretRef": {},
                "managementSecretRef": {},
                "exchange": exchange,
                "queue": queue,
                "routingKeys": routing_keys,
                "retry": {"delays": list(retry_delays)},
            },
            "workers": {
                "maxReplicas": max_replicas,
                "targetBacklogPerReplica": target_backlog_per_replica,
                "scaleDownDelaySeconds": scale_down_delay_seconds,
                **(workers or {}),
            },
            "database": {},
        },
    }
