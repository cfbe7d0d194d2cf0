"""pytest fixtures: one real Kubernetes control plane per test session, and a node for it.

`cluster` starts etcd, kube-apiserver and kube-controller-manager the first time a test asks
for it and stops them when the session ends; `namespace` gives each test a fresh namespace.
The cluster's state directory is claimed like the other services' (`statedir`), so the
clusters of sessions that were killed before they could clean up are stopped and removed when
the next session starts.

`node` adds the scheduler, containerd, kubelet and kube-proxy to the session's cluster (the
first time a test asks for it), with the pause and project images imported, so pods run.
Nodes of killed sessions are removed when the next node starts (`node.sweep`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from matchops_devenv import statedir
from matchops_devenv.access import ClusterAccess
from matchops_devenv.controlplane import ControlPlane
from matchops_devenv.node import Node


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """The session's running control plane (for adding components or node processes)."""
    state_dir = statedir.claim("cluster")
    plane = ControlPlane(state_dir)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
        statedir.release(state_dir)


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane) -> ClusterAccess:
    """kubeconfig, server URL and the matching kubectl of the session's cluster."""
    return control_plane.access


@pytest.fixture
def namespace(cluster: ClusterAccess) -> Iterator[str]:
    """A namespace of its own for one test, deleted (without waiting) afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def node(control_plane: ControlPlane) -> Iterator[Node]:
    """A Ready node in the session's cluster; `node.reachable(url)` gives pods a host service."""
    started = Node(control_plane)
    try:
        started.start()
        yield started
    finally:
        started.stop()
