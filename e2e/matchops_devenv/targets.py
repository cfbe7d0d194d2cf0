"""Where the end-to-end scenarios run: the local cluster's node, or a cluster named by settings.

The local cluster (control plane + node of this package) is the default. A cluster of your own,
such as kind with Docker (`make e2e-kind`), is named by environment variables:

- `MATCHOPS_E2E_KUBECONFIG`: its kubeconfig (current context);
- `MATCHOPS_E2E_HOST_ADDRESS`: an address of this machine that its pods reach (for kind, the
  gateway of Docker's `kind` network); RabbitMQ and PostgreSQL listen there;
- `MATCHOPS_E2E_IMAGE`: the project image, already loaded on its nodes (default
  `localhost/matchops:dev`, what `kind load docker-image` loads).
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from matchops_devenv import toolchain
from matchops_devenv.access import ClusterAccess
from matchops_devenv.images import PROJECT_IMAGE
from matchops_devenv.node import Node
from matchops_devenv.pipeline import Target

KUBECONFIG_ENV = "MATCHOPS_E2E_KUBECONFIG"
HOST_ADDRESS_ENV = "MATCHOPS_E2E_HOST_ADDRESS"
IMAGE_ENV = "MATCHOPS_E2E_IMAGE"


class TargetError(ValueError):
    """The settings naming a cluster are incomplete or wrong."""


def local_target(access: ClusterAccess, node: Node) -> Target:
    """The local cluster: the project image imported into its node, services forwarded."""
    return Target(
        access=access,
        reachable=node.reachable,
        helm_path=toolchain.program("helm"),
        image=PROJECT_IMAGE,
    )


@dataclass(frozen=True)
class ExternalCluster:
    """A cluster of the user's, as the environment names it."""

    kubeconfig: Path
    host_address: str
    image: str


def external_cluster(env: Mapping[str, str]) -> ExternalCluster | None:
    """The cluster named by `MATCHOPS_E2E_*`, or None when no kubeconfig is named."""
    kubeconfig = env.get(KUBECONFIG_ENV)
    if not kubeconfig:
        return None
    address = env.get(HOST_ADDRESS_ENV, "")
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise TargetError(
            f"{HOST_ADDRESS_ENV}={address!r}: set it to an IPv4 address of this machine that "
            "the cluster's pods reach (for kind: the gateway of Docker's kind network)"
        ) from None
    path = Path(kubeconfig)
    if not path.is_file():
        raise TargetError(f"{KUBECONFIG_ENV}={kubeconfig}: no such file")
    return ExternalCluster(path, address, env.get(IMAGE_ENV) or PROJECT_IMAGE)


def external_target(cluster: ExternalCluster) -> Target:
    """A target on the user's cluster; its pods dial the services' URLs unchanged."""
    access = ClusterAccess(
        kubeconfig=cluster.kubeconfig,
        server=current_server(yaml.safe_load(cluster.kubeconfig.read_text())),
        kubectl_path=_program("kubectl"),
    )
    return Target(
        access=access, reachable=lambda url: url, helm_path=_program("helm"), image=cluster.image
    )


def current_server(kubeconfig: Mapping[str, Any]) -> str:
    """The API server URL of a kubeconfig's current context."""
    current = kubeconfig.get("current-context")
    try:
        contexts = {c["name"]: c["context"] for c in kubeconfig["contexts"]}
        clusters = {c["name"]: c["cluster"] for c in kubeconfig["clusters"]}
        server: str = clusters[contexts[current]["cluster"]]["server"]
    except (KeyError, TypeError):
        raise TargetError(
            f"the kubeconfig has no server for its current context {current!r}"
        ) from None
    return server


def _program(name: str) -> Path:
    """A program on PATH (kubectl, helm of the user's own), else the one built here."""
    found = shutil.which(name)
    return Path(found) if found else toolchain.program(name)
