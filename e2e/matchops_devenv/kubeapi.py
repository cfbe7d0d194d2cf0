"""A few calls to the local cluster's API server, for the environment's own bookkeeping."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class KubeApiError(RuntimeError):
    """The API server refused a request; the message carries its status and reason."""


class KubeApi:
    """JSON requests to an API server with a client certificate."""

    def __init__(self, server: str, ca: Path, cert: Path, key: Path) -> None:
        self.server = server.rstrip("/")
        self._tls = ssl.create_default_context(cafile=str(ca))
        self._tls.load_cert_chain(cert, key)

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when it does not exist."""
        return self._request("GET", path, None, missing_ok=True)

    def create_or_replace(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create `body` in `collection`, or replace the object of that name."""
        name = body["metadata"]["name"]
        existing = self.get(f"{collection}/{name}")
        if existing is None:
            created = self._request("POST", collection, body)
        else:
            body = {**body, "metadata": {**body["metadata"], **_version(existing)}}
            created = self._request("PUT", f"{collection}/{name}", body)
        assert created is not None
        return created

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the server URL is the cluster's own
            f"{self.server}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._tls) as response:  # noqa: S310
                loaded: dict[str, Any] = json.loads(response.read())
                return loaded
        except urllib.error.HTTPError as error:
            if missing_ok and error.code == 404:
                return None
            detail = error.read().decode(errors="replace")
            raise KubeApiError(f"{method} {path}: {error.code} {detail}") from None


def _version(existing: dict[str, Any]) -> dict[str, Any]:
    return {"resourceVersion": existing["metadata"]["resourceVersion"]}
