"""The only module that talks to the Kubernetes API (lightkube's async client).

Children are written with server-side apply under one field manager, forced, so the operator
owns exactly the fields it sets and an unchanged object produces no write. A child of the
expected name that belongs to someone else is never taken over.
"""

from __future__ import annotations

import base64
import binascii
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx2
import kopf
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import CronJob
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from matchops_operator.conditions import EventSpec
from matchops_operator.desired.common import MANAGER, Owner
from matchops_operator.problems import retrying, stalled
from matchops_operator.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION, SecretKeyRef

MatchIngestion = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)

Child = TypeVar("Child", CronJob, Deployment)
_NOT_FOUND = 404
_FORBIDDEN = 403


@dataclass(frozen=True)
class Applied(Generic[Child]):
    """A child as the API server holds it after apply, and whether apply created it."""

    object: Child
    created: bool


class Kube:
    """Reads Secrets, applies and removes children, writes status and Events."""

    def __init__(
        self, client: AsyncClient, config: KubeConfig, instance: str | None = None
    ) -> None:
        self._client = client
        self._config = config
        self._instance = instance or socket.gethostname()

    @classmethod
    def connect(cls, kubeconfig: Path | None = None, instance: str | None = None) -> Kube:
        """A client from `kubeconfig`, else in-cluster credentials, else $KUBECONFIG."""
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        client = AsyncClient(config, field_manager=MANAGER, timeout=httpx2.Timeout(15.0))
        return cls(client, config, instance)

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same server and credentials, for kopf's own client (watching, finalizers)."""
        return connection_info(self._config)

    async def close(self) -> None:
        await self._client.close()

    async def secret_value(self, namespace: str, ref: SecretKeyRef, purpose: str) -> str:
        """The text under `ref.key` of a Secret; a stalled Problem naming what is missing."""
        where = f"Secret {namespace}/{ref.name}"
        try:
            secret = await self._client.get(Secret, ref.name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == _NOT_FOUND:
                raise stalled(
                    "SecretNotFound",
                    f"{where} not found; create it with key {ref.key!r} holding {purpose}",
                ) from exc
            if exc.status.code == _FORBIDDEN:
                raise stalled(
                    "SecretForbidden",
                    f"the operator may not read {where}: {exc.status.message}",
                ) from exc
            raise retrying("APIError", f"reading {where}: {exc.status.message}") from exc
        data = secret.data or {}
        if ref.key not in data:
            keys = ", ".join(sorted(data)) or "none"
            raise stalled(
                "SecretKeyNotFound",
                f"{where} has no key {ref.key!r} (it has: {keys}); add {purpose} under that key",
            )
        try:
            return base64.b64decode(data[ref.key]).decode().strip()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise stalled(
                "SecretKeyNotFound", f"{ref.source(namespace)} does not hold text ({purpose})"
            ) from exc

    async def ingestions(self, namespace: str | None) -> list[dict[str, Any]]:
        """The MatchIngestions of `namespace`, or of every namespace (None), as plain objects.

        A listing the operator has no permission for raises `ListForbidden`.
        """
        where = f"in {namespace}" if namespace else "in every namespace"
        try:
            return [
                item.to_dict()  # type: ignore[no-untyped-call]
                async for item in self._client.list(MatchIngestion, namespace=namespace or ALL_NS)
            ]
        except ApiError as exc:
            if exc.status.code == _FORBIDDEN:
                raise stalled(
                    "ListForbidden",
                    f"the operator may not list MatchIngestions {where}: {exc.status.message}",
                ) from exc
            raise retrying(
                "APIError", f"listing MatchIngestions {where}: {exc.status.message}"
            ) from exc

    async def get(self, kind: type[Child], owner: Owner, name: str) -> Child | None:
        """The child of that name, or None."""
        try:
            return await self._client.get(kind, name, namespace=owner.namespace)
        except ApiError as exc:
            if exc.status.code == _NOT_FOUND:
                return None
            raise retrying(
                "APIError", f"reading {kind.__name__} {name}: {exc.status.message}"
            ) from exc

    async def apply(self, desired: Child, existing: Child | None, owner: Owner) -> Applied[Child]:
        """Server-side apply of a child; refuses one of the same name that is not ours."""
        kind = type(desired).__name__
        name = desired.metadata.name if desired.metadata else None
        if existing is not None and not _owned_by(existing, owner):
            raise stalled(
                "NameTaken",
                f"{kind} {owner.namespace}/{name} already exists and does not belong to "
                f"{KIND} {owner.name}; delete or rename it",
            )
        try:
            applied = await self._client.apply(desired, field_manager=MANAGER, force=True)
        except ApiError as exc:
            reason = f"the API server refused {kind} {owner.namespace}/{name}: {exc.status.message}"
            if exc.status.code in (400, 403, 409, 422):
                raise stalled("ApplyFailed", reason) from exc
            raise retrying("APIError", reason) from exc
        return Applied(applied, created=existing is None)

    async def delete_child(self, existing: Child, owner: Owner) -> None:
        """Delete a child the spec no longer asks for, if it is ours."""
        if not _owned_by(existing, owner) or existing.metadata is None:
            return
        try:
            await self._client.delete(
                type(existing), existing.metadata.name or "", namespace=owner.namespace
            )
        except ApiError as exc:
            if exc.status.code != _NOT_FOUND:
                raise retrying("APIError", f"deleting {existing.metadata.name}: {exc}") from exc

    async def patch_status(self, owner: Owner, patch: dict[str, Any]) -> None:
        """Merge `patch` into the MatchIngestion's status; a resource gone meanwhile is fine."""
        try:
            await self._client.patch(
                MatchIngestion.Status,
                owner.name,
                {"status": patch},
                namespace=owner.namespace,
                patch_type=PatchType.MERGE,
            )
        except ApiError as exc:
            if exc.status.code != _NOT_FOUND:
                raise

    async def record(self, owner: Owner, event: EventSpec) -> None:
        """Record an Event on the MatchIngestion (shown by `kubectl describe`)."""
        now = datetime.now(UTC)
        await self._client.create(
            Event(
                metadata=ObjectMeta(generateName=f"{owner.name}.", namespace=owner.namespace),
                involvedObject=ObjectReference(
                    apiVersion=API_VERSION,
                    kind=KIND,
                    name=owner.name,
                    namespace=owner.namespace,
                    uid=owner.uid,
                ),
                type=event.type,
                reason=event.reason,
                message=event.message[:1024],
                count=1,
                firstTimestamp=now,
                lastTimestamp=now,
                source=EventSource(component=MANAGER),
                reportingComponent=MANAGER,
                reportingInstance=self._instance,
            )
        )


def _owned_by(obj: CronJob | Deployment, owner: Owner) -> bool:
    references = obj.metadata.ownerReferences if obj.metadata else None
    return any(ref.uid == owner.uid for ref in references or [])


def connection_info(config: KubeConfig) -> kopf.ConnectionInfo:
    """kopf's login for the server and credentials of `config`.

    Read afresh on each call: kopf logs in again after a 401, and an in-cluster token file is
    rotated by the kubelet.
    """
    single = config.get()
    if single is None:
        raise kopf.LoginError("the kubeconfig has no current context")
    cluster, user = single.cluster, single.user
    token = user.token if user else None
    if user and user.token_file:
        token = Path(single.abs_file(user.token_file)).read_text().strip()

    def path(value: str | None) -> str | None:
        return str(single.abs_file(value)) if value else None

    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=path(cluster.certificate_auth),
        ca_data=cluster.certificate_auth_data,
        insecure=cluster.insecure or None,
        username=user.username if user else None,
        password=user.password if user else None,
        token=token,
        certificate_path=path(user.client_cert) if user else None,
        certificate_data=user.client_cert_data if user else None,
        private_key_path=path(user.client_key) if user else None,
        private_key_data=user.client_key_data if user else None,
        default_namespace=single.context.namespace,
    )
