"""`python -m matchops_devenv cluster up|down|status`: the local cluster as a command."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from matchops_devenv import noderegistry, procs, toolchain
from matchops_devenv.controlplane import (
    ControlPlane,
    ControlPlaneConfig,
    ControlPlaneError,
    Layout,
    owner_pid,
    shut_down,
)
from matchops_devenv.node import Node, NodeConfig, NodeError, sweep


def default_state_dir() -> Path:
    """One local cluster per cache: `$MATCHOPS_CACHE/cluster`."""
    return toolchain.cache_dir() / "cluster"


def _address(text: str) -> str:
    """An IP address option, refused by argparse with a clear message when it is not one."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add the `cluster` command and its actions to the top-level parser."""
    parser = commands.add_parser("cluster", help="run a local Kubernetes control plane")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where certificates, kubeconfig, etcd data and logs live (default: %(default)s)",
    )
    actions = parser.add_subparsers(dest="action", required=True)

    defaults = ControlPlaneConfig()
    up = actions.add_parser("up", help="start the cluster and keep it running until Ctrl-C")
    up.add_argument(
        "--bind-address",
        type=_address,
        default=defaults.bind_address,
        help="address the API server listens on (default: %(default)s)",
    )
    up.add_argument(
        "--advertise-address",
        type=_address,
        help="address published for the API server (default: the bind address)",
    )
    up.add_argument(
        "--service-cidr",
        type=_network,
        default=defaults.service_cidr,
        help="Service cluster IP range (default: %(default)s)",
    )
    up.add_argument("--port", type=int, default=0, help="API server port (default: a free port)")
    node_defaults = NodeConfig()
    up.add_argument(
        "--node",
        action="store_true",
        help="add a node (scheduler, containerd, kubelet, kube-proxy) so pods run; needs root",
    )
    up.add_argument(
        "--pod-subnet",
        type=_network,
        default=node_defaults.pod_subnet,
        help="the node's pod addresses, inside its own network namespace (default: %(default)s)",
    )
    up.set_defaults(run=run_up)

    down = actions.add_parser("down", help="stop the cluster started by `cluster up`")
    down.set_defaults(run=run_down)

    status = actions.add_parser("status", help="tell whether the cluster runs (exit 1 if not)")
    status.set_defaults(run=run_status)


def run_up(args: argparse.Namespace) -> int:
    config = ControlPlaneConfig(
        bind_address=args.bind_address,
        advertise_address=args.advertise_address,
        service_cidr=args.service_cidr,
        apiserver_port=args.port,
    )
    plane = ControlPlane(args.state_dir, config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    try:
        plane.start()
    except (ControlPlaneError, procs.ServiceError, toolchain.ToolchainError) as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    # Each part is stopped whatever happens to the others: a node that fails to stop must not
    # leave etcd and the API server running.
    try:
        code = _start_node_and_serve(plane, args, started, stop)
    finally:
        plane.stop()
    if code == 0:
        print("cluster: stopped", flush=True)
    return code


def _start_node_and_serve(
    plane: ControlPlane, args: argparse.Namespace, started: float, stop: threading.Event
) -> int:
    """Start the node if asked, then serve until `stop` is set or a component exits."""
    node = None
    if args.node:
        node = Node(plane, NodeConfig(pod_subnet=args.pod_subnet), nodes_root=plane.layout.nodes)
        try:
            node.start()
        except NodeError as error:
            print(f"cluster: node: {error}", file=sys.stderr)
            return 1
    try:
        _announce(plane, node, time.monotonic() - started)
        return _serve(plane, node, stop)
    finally:
        if node is not None:
            node.stop()


def _announce(plane: ControlPlane, node: Node | None, seconds: float) -> None:
    kubeconfig = plane.layout.kubeconfig
    print(f"cluster: ready in {seconds:.1f}s at {plane.server}")
    if node is not None:
        print(f"cluster: node {node.name} Ready ({node.timings}); state {node.state_dir}")
        print(f"cluster: pods reach this machine's loopback services at {node.host_address}")
    print(f"cluster: kubeconfig {kubeconfig}")
    print(f"  export KUBECONFIG={kubeconfig}")
    print("cluster: Ctrl-C or `python -m matchops_devenv cluster down` stops it", flush=True)


def _serve(plane: ControlPlane, node: Node | None, stop: threading.Event) -> int:
    """0 once `stop` is set; 1 when a component exits on its own."""
    while not stop.wait(1.0):
        failed = plane.failed() or (node.failed() if node is not None else None)
        if failed is not None:
            print(
                f"cluster: {failed.name} exited; log {failed.log_path}:\n"
                f"{procs.tail(failed.log_path)}",
                file=sys.stderr,
            )
            return 1
    return 0


def run_down(args: argparse.Namespace) -> int:
    try:
        stopped = shut_down(args.state_dir)
    except ControlPlaneError as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    if noderegistry.registry_dir().is_dir():
        # A crashed `cluster up --node` leaves containers, mounts and namespaces that pid
        # files do not reach.
        try:
            stopped = bool(sweep(Layout(args.state_dir.resolve()).nodes)) or stopped
        except NodeError as error:
            print(f"cluster: {error}", file=sys.stderr)
            return 1
    print("cluster: stopped" if stopped else "cluster: not running")
    return 0


def run_status(args: argparse.Namespace) -> int:
    layout = Layout(args.state_dir.resolve())
    pid = owner_pid(layout)
    if pid is None:
        print(f"cluster: not running (state in {layout.root})")
        return 1
    print(f"cluster: running (process {pid}); kubeconfig {layout.kubeconfig}")
    return 0
