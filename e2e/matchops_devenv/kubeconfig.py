"""kubeconfig files for the local cluster's clients, with credentials embedded.

Embedding the CA and the client key pair keeps each kubeconfig self-contained: it can be
copied, mounted or passed to any tool without the PKI directory beside it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from matchops_devenv.pki import KeyPair


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_kubeconfig(
    *,
    server: str,
    ca_pem: bytes,
    client: KeyPair,
    cluster: str = "matchops",
    user: str = "matchops-admin",
    namespace: str | None = None,
    tls_server_name: str | None = None,
) -> dict[str, Any]:
    """A kubeconfig with one cluster, one user and one current context named after the cluster.

    `tls_server_name` is the name the server's certificate is checked against, for clients
    that dial the server by an address the certificate does not name.
    """
    context: dict[str, str] = {"cluster": cluster, "user": user}
    if namespace is not None:
        context["namespace"] = namespace
    server_entry = {"server": server, "certificate-authority-data": _b64(ca_pem)}
    if tls_server_name is not None:
        server_entry["tls-server-name"] = tls_server_name
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": cluster, "cluster": server_entry}],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client.cert_pem),
                    "client-key-data": _b64(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": context}],
        "current-context": cluster,
    }


def write_kubeconfig(path: Path, config: dict[str, Any]) -> Path:
    """Write `config` to `path`, readable by its owner only (it holds a private key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
