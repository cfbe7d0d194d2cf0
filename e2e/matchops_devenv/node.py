"""A real Kubernetes node beside the local control plane: containerd, kubelet, kube-proxy.

`Node(control_plane).start()` adds what makes pods run to a running control plane: the
scheduler, then, in a network namespace of the node's own (see `nodenet`), containerd (its
image store holding the pause and project images, see `containerd`), the kubelet and
kube-proxy. It returns once the node is Ready and schedulable. `stop()` removes everything the
node put on the host: processes, containerd's shims, mounts, the pods' and the node's network
namespaces, the bridge, iptables rules, cgroups, log links. A node whose owner died (a crashed
test session, a killed `cluster up`) is removed the same way by the next node that starts, or
by `sweep()`.

What it touches on the host is named after the node's id (six hex digits): network namespace
and host link `matchops-<id>`, nat chain `MATCHOPS-<id>`, cgroup `/matchops-<id>` in every
hierarchy, its state directory, its registry entry (`noderegistry`), the kubelet's log links
in /var/log/containers and libcni's cache files, both named after the node's pods and network.
The kubelet also sets six kernel tunables, which the last node to go puts back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from matchops_devenv import (
    containerd,
    hostnet,
    images,
    leftovers,
    nodenet,
    noderegistry,
    pki,
    procs,
    statedir,
    toolchain,
)
from matchops_devenv.controlplane import ControlPlane, answers_ok
from matchops_devenv.kubeapi import KubeApi, KubeApiError
from matchops_devenv.nodeconfig import (
    API_SERVER_NAME,
    KUBE_PROXY_HEALTHZ_PORT,
    NodeLayout,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
    render_toml,
)
from matchops_devenv.nodenet import NodeNetwork
from matchops_devenv.ports import free_port

PROGRAMS = ("kube-scheduler", "kubelet", "kube-proxy")
# Ports of the URL schemes `reachable` rewrites when a URL names none.
DEFAULT_PORTS = {"amqp": 5672, "postgresql": 5432, "postgres": 5432, "http": 80, "https": 443}
TASKS = "io.containerd.runtime.v2.task"
CRI_STATE = "io.containerd.grpc.v1.cri"
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
# The node's components look for iptables, mount and runc here even when the caller's PATH
# lacks the sbin directories.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NodeError(RuntimeError):
    """The node could not start; the message names the component and, if any, its log."""


# What goes wrong while a node starts, reported as a NodeError carrying the cause.
STARTUP_ERRORS = (
    OSError,
    ValueError,
    procs.ServiceError,
    toolchain.ToolchainError,
    images.ImageError,
    containerd.SeedError,
    hostnet.HostNetworkError,
    KubeApiError,
)


def default_nodes_root() -> Path:
    """Where test sessions' nodes keep their state, beside the other services' directories.

    A directory of its own: `statedir.sweep` removes a crashed run's directory wholesale and
    must never reach a node's mounts. Nodes are swept by `sweep()`.
    """
    return statedir.state_root() / "nodes"


@dataclass(frozen=True)
class NodeConfig:
    """What a node looks like; every field has a working default."""

    name: str = "matchops-node"
    pod_subnet: str = "10.244.0.0/24"
    # Each node takes the first free /30 of this range for its link to the host.
    link_range: str = "10.213.0.0/16"
    bridge: str = "matchops0"
    # Import the project image (built from the Dockerfile first when its sources changed).
    project_image: bool = True
    start_timeout: float = 120.0


@dataclass
class Timings:
    """Seconds spent in each phase of a start, for people and benchmarks."""

    phases: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[phase] = time.monotonic() - started

    def __str__(self) -> str:
        return ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in self.phases.items())


class Node:
    """One node of the control plane's cluster, started and removed as a whole."""

    def __init__(
        self,
        control_plane: ControlPlane,
        config: NodeConfig | None = None,
        nodes_root: Path | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.config = config or NodeConfig()
        self.nodes_root = (nodes_root or default_nodes_root()).resolve()
        self.network: NodeNetwork | None = None
        self.layout: NodeLayout | None = None
        self.services: list[procs.Service] = []
        self.timings = Timings()
        self._programs: dict[str, Path] = {}

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def node_id(self) -> str:
        return self._network().node_id

    @property
    def state_dir(self) -> Path:
        return self._layout().root

    @property
    def host_address(self) -> str:
        """The host as pods see it: services forwarded with `reach` answer here."""
        return str(self._network().host_address)

    @property
    def cgroup(self) -> str:
        """The node's top-level cgroup: containerd, its shims and every pod run below it."""
        return "/" + nodenet.name_of(self.node_id)

    def start(self) -> None:
        """Start the node and return once it is Ready and schedulable."""
        if self.services:
            raise NodeError(f"node {self.name} is running already")
        if os.geteuid() != 0:
            raise NodeError(
                "a node needs root: it creates network namespaces, cgroups and mounts "
                "(sudo make cluster; or make cluster CLUSTER_FLAGS= for the control plane alone)"
            )
        timings = self.timings = Timings()
        started = time.monotonic()
        try:
            with timings.measure("images"):
                archives = self._image_archives()
            with timings.measure("image seed"):
                seed = containerd.ensure_seed(archives)
            self._programs = toolchain.programs(*PROGRAMS)
            self._warn_about_skew()
            with timings.measure("sweep"):
                self._sweep()
            self._register()
            with timings.measure("network"):
                self._create_host_objects()
            with timings.measure("image store"):
                containerd.link_root(seed, self._layout().containerd_root)
            self._write_files()
            with timings.measure("containerd"):
                self._start_containerd()
            with timings.measure("node ready"):
                self._start_kubernetes_components()
        except BaseException as error:
            self.stop()
            if isinstance(error, STARTUP_ERRORS):
                raise NodeError(f"node {self.name} did not start: {error}") from error
            raise
        timings.phases["total"] = time.monotonic() - started

    def stop(self) -> None:
        """Stop every component and remove all the node put on the host."""
        for service in reversed(self.services):
            service.stop(timeout=10)
        self.services.clear()
        if self.network is None or self.layout is None:
            return
        reclaim(self.network.node_id, self.layout.root)
        with noderegistry.locked():
            noderegistry.unregister(self.network.node_id)
            noderegistry.restore_host()
        self.network = None

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failed(self) -> procs.Service | None:
        """The first component that has exited on its own, if any."""
        return next((service for service in self.services if not service.running()), None)

    def reach(self, host: str, port: int) -> str:
        """The address pods dial for the service listening on `host`:`port` of this machine.

        A loopback (or every-address) service is forwarded from the host's link address; any
        other address or name is dialled as it is.
        """
        try:
            address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
        except ValueError:
            return host
        if address.is_loopback or address.is_unspecified:
            if address.version != 4:
                raise NodeError(f"{host}: only IPv4 loopback services can be forwarded to pods")
            hostnet.forward_to_loopback(self._network(), port)
            return self.host_address
        return host

    def reachable(self, url: str) -> str:
        """`url` (amqp://, postgresql://, http://...) as pods must write it to reach its server."""
        return pod_url(url, self.reach)

    # --- starting ---------------------------------------------------------------------------

    def _network(self) -> NodeNetwork:
        if self.network is None:
            raise NodeError(f"node {self.name} is not running")
        return self.network

    def _layout(self) -> NodeLayout:
        if self.layout is None:
            raise NodeError(f"node {self.name} is not running")
        return self.layout

    def _api(self) -> KubeApi:
        """The control plane's API server, as its admin."""
        layout = self.control_plane.layout
        return KubeApi(
            self.control_plane.server, layout.cert("ca"), layout.cert("admin"), layout.key("admin")
        )

    def _warn_about_skew(self) -> None:
        """Warn when the kubelet is of a release the API server does not support."""
        server = self._api().get("/version") or {}
        kubelet = toolchain.reported_version(self._programs["kubelet"])
        problem = toolchain.kubelet_skew(str(server.get("gitVersion", "")), kubelet)
        if problem is not None:
            print(f"warning: node {self.name}: {problem}", file=sys.stderr)

    def _image_archives(self) -> list[Path]:
        """The image archives to import, built first where their recipe changed."""
        wanted = [images.ensure_pause_image()]
        if self.config.project_image:
            wanted.append(images.ensure_project_image())
        archives = []
        for image in wanted:
            if image.archive is None:
                raise NodeError(f"{image.name} has no archive to import")
            archives.append(image.archive)
        return archives

    def _sweep(self) -> None:
        """Remove crashed nodes' leftovers, warning about any that resist."""
        # A leftover holds its own names and addresses: it does not keep this node from
        # starting.
        try:
            sweep(self.nodes_root)
        except NodeError as error:
            print(f"warning: {error}", file=sys.stderr)

    def _register(self) -> None:
        """Pick an id and a link network and record them before creating anything."""
        pod_subnet = nodenet.parse_pod_subnet(self.config.pod_subnet)
        with noderegistry.locked():
            registered = noderegistry.entries()
            on_host = hostnet.node_ids_on_host() | _cgroup_ids()
            taken_ids = {entry.node_id for entry in registered} | on_host
            node_id = secrets.token_hex(3)
            while node_id in taken_ids:
                node_id = secrets.token_hex(3)
            link = nodenet.pick_link(
                self.config.link_range,
                taken=[ipaddress.IPv4Network(entry.link) for entry in registered],
                in_use=hostnet.host_networks(),
            )
            layout = NodeLayout(self.nodes_root / node_id)
            layout.check()
            noderegistry.register(
                noderegistry.Entry(node_id, statedir.identity(os.getpid()), layout.root, str(link))
            )
            self.network = NodeNetwork(node_id, link, pod_subnet, self.config.bridge)
            self.layout = layout
            noderegistry.remember_host()

    def _create_host_objects(self) -> None:
        network, layout = self._network(), self._layout()
        layout.root.mkdir(parents=True)
        hostnet.create(network)
        leftovers.create_cgroup(nodenet.name_of(network.node_id))

    def _write_files(self) -> None:
        network, layout, plane = self._network(), self._layout(), self.control_plane
        for directory in (
            *map(layout.component_dir, ("containerd", "kubelet", "kube-proxy", "kube-scheduler")),
            layout.cni_conf_dir,
            layout.cni_ipam_dir,
            layout.kubelet_root,
            layout.pod_logs,
            layout.runc_root,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        ca = plane.certificate_authority
        ca.issue_serving(
            f"system:node:{self.name}",
            pki.SubjectAltNames((self.name,), (network.node_address,)),
        ).write(layout.component_dir("kubelet"), "serving")
        ca.issue_serving(
            "kube-scheduler",
            pki.SubjectAltNames(("localhost",), (ipaddress.IPv4Address("127.0.0.1"),)),
        ).write(layout.component_dir("kube-scheduler"), "serving")
        assert plane.ports is not None
        api_port = plane.ports.apiserver
        api_host = self.reach(plane.config.client_host, api_port)
        node_server = f"https://{api_host}:{api_port}"
        plane.write_kubeconfig(
            pki.kubelet_identity(self.name),
            layout.kubeconfig("kubelet"),
            server=node_server,
            tls_server_name=API_SERVER_NAME,
        )
        plane.write_kubeconfig(
            pki.KUBE_PROXY,
            layout.kubeconfig("kube-proxy"),
            server=node_server,
            tls_server_name=API_SERVER_NAME,
        )
        plane.write_kubeconfig(pki.SCHEDULER, layout.kubeconfig("kube-scheduler"))
        conflist = nodenet.cni_conflist(network, str(layout.cni_ipam_dir))
        (layout.cni_conf_dir / "10-matchops.conflist").write_text(json.dumps(conflist, indent=2))
        layout.containerd_config.write_text(
            render_toml(containerd_config(layout, images.PAUSE_IMAGE, f"{self.cgroup}/containerd"))
        )
        _write_yaml(
            layout.config("kubelet"),
            kubelet_config(layout, network, self.cgroup, plane.layout.cert("ca")),
        )
        _write_yaml(
            layout.config("kube-proxy"),
            kube_proxy_config(network, self.name, layout.kubeconfig("kube-proxy")),
        )

    def _service(self, name: str, argv: list[str], in_node: bool) -> procs.Service:
        directory = self._layout().component_dir(name)
        if in_node:
            argv = hostnet.in_netns(self._network(), argv)
        env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{SYSTEM_PATH}"}
        service = procs.Service(name, argv, directory, env=env, cwd=directory)
        self.services.append(service)
        service.start()
        return service

    def _start_containerd(self) -> None:
        layout = self._layout()
        service = self._service(
            "containerd",
            ["containerd", "--config", str(layout.containerd_config), "--log-level", "warn"],
            in_node=True,
        )
        service.wait_ready(
            lambda: _accepts(layout.containerd_socket), timeout=self.config.start_timeout
        )

    def _start_kubernetes_components(self) -> None:
        network, layout, plane = self._network(), self._layout(), self.control_plane
        timeout = self.config.start_timeout
        scheduler_port = free_port()
        scheduler_kubeconfig = str(layout.kubeconfig("kube-scheduler"))
        scheduler = self._service(
            "kube-scheduler",
            [
                str(self._programs["kube-scheduler"]),
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={scheduler_port}",
                f"--tls-cert-file={layout.cert('kube-scheduler')}",
                f"--tls-private-key-file={layout.key('kube-scheduler')}",
                f"--client-ca-file={plane.layout.cert('ca')}",
                # One scheduler: electing a leader would only delay the first placement.
                "--leader-elect=false",
                "--profiling=false",
            ],
            in_node=False,
        )
        kubelet = self._service(
            "kubelet",
            [
                str(self._programs["kubelet"]),
                f"--config={layout.config('kubelet')}",
                f"--kubeconfig={layout.kubeconfig('kubelet')}",
                f"--root-dir={layout.kubelet_root}",
                f"--hostname-override={self.name}",
                f"--node-ip={network.node_address}",
            ],
            in_node=True,
        )
        proxy = self._service(
            "kube-proxy",
            [str(self._programs["kube-proxy"]), f"--config={layout.config('kube-proxy')}"],
            in_node=True,
        )
        api = self._api()
        self._publish_api_endpoints(api)
        admin_tls = plane.client_tls()
        scheduler.wait_ready(
            lambda: answers_ok(f"https://127.0.0.1:{scheduler_port}/readyz", admin_tls), timeout
        )
        try:
            kubelet.wait_ready(lambda: _schedulable(api, self.name), timeout)
        except procs.ServiceError as error:
            raise NodeError(f"{_why_unschedulable(api, self.name)}\n{error}") from None
        proxy.wait_ready(
            lambda: answers_ok(f"http://{network.node_address}:{KUBE_PROXY_HEALTHZ_PORT}/healthz"),
            timeout,
        )

    def _publish_api_endpoints(self, api: KubeApi) -> None:
        """Point the `kubernetes` Service at the API server, if the API server does not.

        An API server that advertises a loopback address publishes no endpoints (none may be
        loopback); pods reach it through the host's link address instead.
        """
        plane = self.control_plane
        if not ipaddress.ip_address(plane.config.advertised).is_loopback:
            return
        assert plane.ports is not None
        api.create_or_replace(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "kubernetes",
                    "namespace": "default",
                    "labels": {
                        "kubernetes.io/service-name": "kubernetes",
                        "endpointslice.kubernetes.io/managed-by": "matchops-devenv",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [self.host_address], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": plane.ports.apiserver, "protocol": "TCP"}],
            },
        )


def pod_url(url: str, reach: Callable[[str, int], str]) -> str:
    """`url` with its host replaced by the address `reach(host, port)` gives pods."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise NodeError(f"{url!r} names no host")
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if port is None:
        raise NodeError(f"{url!r} names no port and {parts.scheme}:// has no default here")
    host = reach(parts.hostname, port)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@" if credentials else ""
    netloc += f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def reclaim(node_id: str, state_dir: Path | None) -> None:
    """Remove node `node_id` from the host: whatever of it runs or exists. Idempotent.

    `state_dir` is its state directory when known (a leftover found only by its host objects
    has none). Processes are stopped first (the components by their pid files, containers and
    shims through the node's cgroup and containerd socket), then mounts, namespaces, rules,
    cgroups and files go.
    """
    name = nodenet.name_of(node_id)
    layout = NodeLayout(state_dir) if state_dir is not None else None
    sockets: list[Path] = []
    sandboxes: list[str] = []
    if layout is not None and layout.root.is_dir():
        procs.reap_stale(layout.root)
        leftovers.kill_pids(leftovers.shims_of(layout.containerd_socket))
        sockets = leftovers.shim_sockets(layout.containerd_state / TASKS)
        sandboxes = leftovers.sandbox_ids(layout.containerd_state / CRI_STATE)
    leftovers.kill_cgroup(name)
    if layout is not None:
        leftovers.unmount_under(layout.root)
    hostnet.delete(node_id)
    leftovers.remove_cgroup(name)
    for shim_socket in sockets:
        shim_socket.unlink(missing_ok=True)
    leftovers.remove_cni_results(name, sandboxes)
    if layout is not None:
        leftovers.remove_log_links(layout.root)
        leftovers.remove_tree(layout.root)


def sweep(nodes_root: Path | None = None) -> list[str]:
    """Remove every node whose owner is gone, and host objects of nodes nobody registered.

    The ids removed. Live nodes (other test sessions, a running `cluster up`) are left alone.
    A leftover that cannot be removed does not stop the others from going; a NodeError names
    them all afterwards (and their registry entries stay, so the next sweep tries again).
    """
    root = (nodes_root or default_nodes_root()).resolve()
    removed: list[str] = []
    failures: list[str] = []

    def remove(node_id: str, state_dir: Path | None) -> bool:
        try:
            reclaim(node_id, state_dir)
        except STARTUP_ERRORS as error:
            failures.append(f"node {node_id} ({state_dir or 'no state directory'}): {error}")
            return False
        removed.append(node_id)
        return True

    with noderegistry.locked():
        registered = noderegistry.entries()
        known = {entry.node_id for entry in registered}
        for entry in registered:
            if not entry.alive() and remove(entry.node_id, entry.state_dir):
                noderegistry.unregister(entry.node_id)
        orphans = (hostnet.node_ids_on_host() | _cgroup_ids()) - known
        if root.is_dir():
            for directory in root.iterdir():
                if nodenet.ID_PATTERN.fullmatch(directory.name) and directory.name not in known:
                    remove(directory.name, directory)
                    orphans.discard(directory.name)
        for node_id in sorted(orphans):
            remove(node_id, None)
        noderegistry.restore_host()
    if failures:
        raise NodeError("could not remove what crashed nodes left:\n" + "\n".join(failures))
    return removed


def _cgroup_ids() -> set[str]:
    ids: set[str] = set()
    for hierarchy in leftovers.cgroup_hierarchies():
        with contextlib.suppress(OSError):
            ids.update(i for entry in hierarchy.iterdir() if (i := nodenet.id_in(entry.name)))
    return ids


def _write_yaml(path: Path, data: object) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(1)
        client.connect(str(path))
    return True


def _schedulable(api: KubeApi, name: str) -> bool:
    """Whether the node reports Ready and the node lifecycle controller lifted its taints."""
    node = api.get(f"/api/v1/nodes/{name}")
    if node is None:
        return False
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    taints = {taint["key"] for taint in node.get("spec", {}).get("taints", [])}
    return ready and not taints.intersection(NOT_READY_TAINTS)


def _why_unschedulable(api: KubeApi, name: str) -> str:
    node = api.get(f"/api/v1/nodes/{name}")
    if node is None:
        return f"node {name} never registered: the kubelet could not reach the API server"
    for condition in node.get("status", {}).get("conditions", []):
        if condition["type"] == "Ready" and condition["status"] != "True":
            return f"node {name} is not Ready: {condition.get('message', condition['reason'])}"
    return (
        f"node {name} is Ready but still tainted not-ready: the controller manager's node "
        "lifecycle controller, which lifts that taint, is not running"
    )
