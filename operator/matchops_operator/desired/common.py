"""Pieces every child workload shares: identity labels, ownership, security, Secret wiring."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from lightkube.models.core_v1 import (
    Capabilities,
    EmptyDirVolumeSource,
    EnvVar,
    EnvVarSource,
    PodSecurityContext,
    ResourceRequirements,
    SeccompProfile,
    SecretKeySelector,
    SecurityContext,
    Volume,
    VolumeMount,
)
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference

from matchops_operator.spec import API_VERSION, KIND, SecretKeyRef

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
Component = Literal["scraper", "worker"]

MANAGER = "matchops-operator"
INGESTION_LABEL = "matchops.dev/ingestion"
TMP_VOLUME = "tmp"


@dataclass(frozen=True)
class Owner:
    """The MatchIngestion a child belongs to."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> OwnerReference:
        # controller=True lets `kubectl describe` and GC treat the MatchIngestion as the parent;
        # blockOwnerDeletion keeps foreground deletion of the parent waiting for its children.
        return OwnerReference(
            apiVersion=API_VERSION,
            kind=KIND,
            name=self.name,
            uid=self.uid,
            controller=True,
            blockOwnerDeletion=True,
        )


def child_name(owner: Owner, component: Component) -> str:
    """`<name>-scraper` for the CronJob, `<name>-worker` for the Deployment."""
    return f"{owner.name}-{component}"


def selector_labels(owner: Owner, component: Component) -> dict[str, str]:
    """The labels that pick a component's pods (part of an immutable Deployment selector)."""
    return {INGESTION_LABEL: owner.name, "app.kubernetes.io/component": component}


def labels(owner: Owner, component: Component) -> dict[str, str]:
    """Recommended Kubernetes labels plus the selector labels."""
    return {
        "app.kubernetes.io/name": f"matchops-{component}",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/part-of": "matchops",
        "app.kubernetes.io/managed-by": MANAGER,
        **selector_labels(owner, component),
    }


def metadata(owner: Owner, component: Component) -> ObjectMeta:
    return ObjectMeta(
        name=child_name(owner, component),
        namespace=owner.namespace,
        labels=labels(owner, component),
        ownerReferences=[owner.reference()],
    )


def secret_env(name: str, ref: SecretKeyRef) -> EnvVar:
    """An environment variable read from a Secret by reference, never copied."""
    return EnvVar(
        name=name,
        valueFrom=EnvVarSource(secretKeyRef=SecretKeySelector(name=ref.name, key=ref.key)),
    )


def plain_env(values: Mapping[str, str]) -> list[EnvVar]:
    return [EnvVar(name=name, value=value) for name, value in values.items()]


def merge_env(ours: Sequence[EnvVar], theirs: Iterable[Mapping[str, Any]]) -> list[EnvVar]:
    """Our variables, with any the user names replaced by the user's (names stay unique)."""
    user = [cast(EnvVar, EnvVar.from_dict(dict(item))) for item in theirs]
    names = {var.name for var in user}
    return [var for var in ours if var.name not in names] + user


def resources(spec: Mapping[str, Any]) -> ResourceRequirements | None:
    if not spec:
        return None
    return cast(ResourceRequirements, ResourceRequirements.from_dict(dict(spec)))


def container_security() -> SecurityContext:
    """The restricted Pod Security Standard, plus a read-only root file system."""
    return SecurityContext(
        allowPrivilegeEscalation=False,
        readOnlyRootFilesystem=True,
        runAsNonRoot=True,
        capabilities=Capabilities(drop=["ALL"]),
        seccompProfile=SeccompProfile(type="RuntimeDefault"),
    )


def pod_security(run_as: int | None = None) -> PodSecurityContext:
    return PodSecurityContext(
        runAsNonRoot=True,
        runAsUser=run_as,
        runAsGroup=run_as,
        fsGroup=run_as,
        seccompProfile=SeccompProfile(type="RuntimeDefault"),
    )


def tmp_volume() -> Volume:
    """A writable /tmp, since the root file system is read-only."""
    return Volume(name=TMP_VOLUME, emptyDir=EmptyDirVolumeSource(sizeLimit="64Mi"))


def tmp_mount() -> VolumeMount:
    return VolumeMount(name=TMP_VOLUME, mountPath="/tmp")  # noqa: S108 - an emptyDir volume
