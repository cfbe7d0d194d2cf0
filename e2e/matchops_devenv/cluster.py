"""`python -m matchops_devenv cluster up|down|status`: the local control plane as a command."""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from matchops_devenv import procs, toolchain
from matchops_devenv.controlplane import (
    ControlPlane,
    ControlPlaneConfig,
    ControlPlaneError,
    Layout,
    owner_pid,
    shut_down,
)


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
    kubeconfig = plane.layout.kubeconfig
    print(f"cluster: ready in {time.monotonic() - started:.1f}s at {plane.server}")
    print(f"cluster: kubeconfig {kubeconfig}")
    print(f"  export KUBECONFIG={kubeconfig}")
    print("cluster: Ctrl-C or `python -m matchops_devenv cluster down` stops it", flush=True)
    try:
        while not stop.wait(1.0):
            failed = plane.failed()
            if failed is not None:
                print(
                    f"cluster: {failed.name} exited; log {failed.log_path}:\n"
                    f"{procs.tail(failed.log_path)}",
                    file=sys.stderr,
                )
                return 1
    finally:
        plane.stop()
    print("cluster: stopped", flush=True)
    return 0


def run_down(args: argparse.Namespace) -> int:
    try:
        stopped = shut_down(args.state_dir)
    except ControlPlaneError as error:
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
