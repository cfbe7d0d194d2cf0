"""A node leaves nothing on the host: not when stopped, not after its owner was killed.

Each test runs its own control plane and node with a pod holding a host port and a volume, so
there are containers, shims, mounts, a pod network namespace and CNI state to clean up. What is
left is looked up independently of the node's own code: /proc, mountinfo, cgroupfs,
/run/netns, /sys/class/net, iptables-save and the files it wrote. An image import killed
half-way is cleaned up by the next one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from matchops_devenv import containerd, images, leftovers, statedir, toolchain
from matchops_devenv.access import ClusterAccess
from matchops_devenv.controlplane import ControlPlane
from matchops_devenv.images import PAUSE_IMAGE
from matchops_devenv.node import Node, NodeConfig

from .test_lifecycle import Up, cli, processes_referring_to

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.node]

CGROUPS = Path("/sys/fs/cgroup")
REGISTRY = Path(os.environ.get("MATCHOPS_RUN_DIR") or "/run/matchops")
BRIDGE = NodeConfig().bridge
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "holder", "namespace": "default"},
    "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "pause",
                "image": PAUSE_IMAGE,
                "imagePullPolicy": "Never",
                # A host port: the CNI portmap plugin adds rules for it.
                "ports": [{"containerPort": 8080, "hostPort": 18080}],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }
        ],
        "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
    },
}


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(pid: int | str) -> bool:
    """Whether `pid` exists and is not a zombie (the machine's init reaps orphans lazily)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _mounts() -> list[tuple[str, str]]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        found.append((fields[4], fields[fields.index("-") + 1]))
    return found


def container_pids(node_id: str) -> set[int]:
    pids: set[int] = set()
    top = CGROUPS / "pids" / f"matchops-{node_id}"
    for procs in top.rglob("cgroup.procs"):
        pids.update(int(pid) for pid in procs.read_text().split())
    return pids


def shim_sockets(state_dir: Path) -> set[Path]:
    """The sockets of the node's shims, as containerd 1.6 names them.

    sha256 of containerd's address, namespace and task id, in /run/containerd/s.
    """
    address = state_dir / "containerd" / "containerd.sock"
    tasks = state_dir / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    return {
        Path("/run/containerd/s")
        / hashlib.sha256(f"{address}/k8s.io/{task.name}".encode()).hexdigest()
        for task in (tasks.iterdir() if tasks.is_dir() else [])
    }


def bridges(netns: str) -> list[str]:
    """Where a bridge named like the node's exists: in the node's namespace, or on the host."""
    found = []
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"host: {BRIDGE}")
    inside = subprocess.run(
        ["ip", "-n", netns, "link", "show", BRIDGE], capture_output=True, check=False
    )
    if inside.returncode == 0:
        found.append(f"{netns}: {BRIDGE}")
    return found


def traces(node_id: str, state_dir: Path, pids: set[int], sockets: set[Path]) -> dict[str, list]:
    """What of node `node_id` exists on the host, by kind."""
    name = f"matchops-{node_id}"
    marker = str(state_dir)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    log_links = Path("/var/log/containers")
    cni_results = Path("/var/lib/cni/results")
    return {
        "processes": [
            (pid, _cmdline(pid))
            for pid in os.listdir("/proc")
            if pid.isdigit() and marker in _cmdline(pid) and _running(pid)
        ],
        "containers": sorted(pid for pid in pids if _running(pid)),
        "cgroups": sorted(str(h / name) for h in CGROUPS.iterdir() if (h / name).exists()),
        "mounts": [point for point, _ in _mounts() if point.startswith(marker)],
        "pod netns": [p for p, fs in _mounts() if fs == "nsfs" and p.startswith(marker)],
        "node netns": [p for p in [Path("/run/netns") / name] if p.exists()],
        "link": [p for p in [Path("/sys/class/net") / name] if p.exists()],
        "bridge": bridges(name),
        "nat chain": [line for line in rules.splitlines() if f"MATCHOPS-{node_id}" in line],
        "filter rule": [
            line
            for line in rules.splitlines()
            if f"-A INPUT -i {name}" in line and "--ctstate INVALID" in line
        ],
        "state dir": [state_dir] if state_dir.exists() else [],
        "registry": [p for p in [REGISTRY / "nodes" / f"{node_id}.json"] if p.exists()],
        "log links": [
            link
            for link in (log_links.iterdir() if log_links.is_dir() else [])
            if os.readlink(link).startswith(marker)
        ],
        "cni cache": sorted(cni_results.glob(f"{name}-*")) if cni_results.is_dir() else [],
        "shim sockets": sorted(p for p in sockets if p.exists()),
    }


def start_owner(script: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Run `script` in a Python process of its own; return it and the first line it prints."""
    owner = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line, owner.communicate(timeout=60)[1]
    return owner, line


def run_pod(access: ClusterAccess) -> None:
    access.kubectl("apply", "-f", "-", input=yaml.safe_dump(POD))
    access.kubectl("wait", "--for=condition=Ready", "pod/holder", "--timeout=120s", timeout=150)


def assert_present(found: dict[str, list]) -> None:
    """Every kind of trace exists while the node runs: the checks below can fail."""
    missing = [kind for kind, items in found.items() if not items]
    assert missing == [], f"no {missing} while the node runs: {found}"


def left_over(found: dict[str, list]) -> dict[str, list]:
    return {kind: items for kind, items in found.items() if items}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for containerd's socket paths (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="matchops-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plane(short_dir: Path) -> Iterator[ControlPlane]:
    started = ControlPlane(short_dir / "cluster")
    started.start()
    yield started
    started.stop()


def test_stop_removes_everything_the_node_put_on_the_host(
    plane: ControlPlane, short_dir: Path
) -> None:
    node = Node(plane, NodeConfig(project_image=False), nodes_root=short_dir / "nodes")
    node.start()
    try:
        run_pod(plane.access)
        node_id, state_dir = node.node_id, node.state_dir
        pids, sockets = container_pids(node_id), shim_sockets(state_dir)
        found = traces(node_id, state_dir, pids, sockets)
        assert_present(found)
        # The bridge lives in the node's namespace, never on the host.
        assert found["bridge"] == [f"matchops-{node_id}: {BRIDGE}"]
    finally:
        node.stop()

    assert left_over(traces(node_id, state_dir, pids, sockets)) == {}


CRASHING_OWNER = """
import sys, time
from pathlib import Path
from matchops_devenv.controlplane import ControlPlane
from matchops_devenv.node import Node, NodeConfig

plane = ControlPlane(Path(sys.argv[1]))
plane.start()
node = Node(plane, NodeConfig(project_image=False), nodes_root=plane.layout.nodes)
node.start()
print(node.node_id, node.state_dir, flush=True)
time.sleep(600)
"""


def test_cluster_down_removes_the_node_of_a_killed_owner(short_dir: Path) -> None:
    state = short_dir / "cluster"
    owner, line = start_owner(CRASHING_OWNER, str(state))
    try:
        node_id, state_dir_text = line.split()
        state_dir = Path(state_dir_text)
        access = ClusterAccess(state / "kubeconfig", "", toolchain.program("kubectl"))
        run_pod(access)
        pids, sockets = container_pids(node_id), shim_sockets(state_dir)
        assert_present(traces(node_id, state_dir, pids, sockets))
    finally:
        # The owner dies without any clean-up: everything it started keeps running.
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
    time.sleep(0.5)
    assert traces(node_id, state_dir, pids, sockets)["processes"]

    down = subprocess.run(
        [sys.executable, "-m", "matchops_devenv", "cluster", "--state-dir", str(state), "down"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert down.returncode == 0, down.stderr
    assert left_over(traces(node_id, state_dir, pids, sockets)) == {}
    marker = str(state)
    assert not [
        p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p) and _running(p)
    ]
    assert down.stdout.strip() == "cluster: stopped"


def test_ctrl_c_in_cluster_up_with_a_node_stops_everything(short_dir: Path) -> None:
    """What `make cluster` runs, stopped the way its users stop it."""
    up = Up(short_dir / "cluster", "--node")
    try:
        kubeconfig = up.wait_ready()
        node_line = next(line for line in up.output if line.startswith("cluster: node "))
        state_dir = Path(node_line.rsplit("; state ", 1)[1].strip())
        node_id = state_dir.name
        access = ClusterAccess(kubeconfig, "", toolchain.program("kubectl"))
        nodes = access.kubectl("get", "nodes").stdout
        assert re.search(r"^matchops-node +Ready ", nodes, re.MULTILINE), nodes
        run_pod(access)
        pids, sockets = container_pids(node_id), shim_sockets(state_dir)
        assert_present(traces(node_id, state_dir, pids, sockets))

        up.process.send_signal(signal.SIGINT)
        stdout, stderr = up.process.communicate(timeout=120)
    finally:
        if up.process.poll() is None:
            up.process.kill()
            up.process.wait()
            cli(up.state_dir, "down")

    assert up.process.returncode == 0, stderr
    assert stdout.strip().endswith("cluster: stopped")
    assert left_over(traces(node_id, state_dir, pids, sockets)) == {}
    assert processes_referring_to(up.state_dir) == []


# Imports the archive for real, then stands for an import killed while containerd unpacks a
# layer: containerd keeps running, and the layer it had mounted stays mounted.
KILLED_IMPORT = """
import subprocess, sys, time
from pathlib import Path
from matchops_devenv import containerd, images

imported = images.import_archive

def import_and_hang(archive, address, namespace, snapshotter):
    imported(archive, address, namespace, snapshotter)
    (partial,) = containerd.seeds_dir().glob(".*.partial")
    layer = partial / "root" / "tmpmounts" / "containerd-mount1"
    layer.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "layer", str(layer)], check=True)
    print(partial, flush=True)
    time.sleep(600)

images.import_archive = import_and_hang
containerd.ensure_seed([Path(sys.argv[1])])
"""


def test_an_image_import_killed_half_way_is_cleaned_up_by_the_next(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = images.ensure_pause_image().archive
    assert archive is not None
    # An image store and state directories of the test's own, away from the nodes' cache.
    monkeypatch.setenv("MATCHOPS_CACHE", str(short_dir / "cache"))
    monkeypatch.setenv("MATCHOPS_STATE_DIR", str(short_dir / "state"))
    state_root = statedir.state_root()
    owner, line = start_owner(KILLED_IMPORT, str(archive))
    try:
        partial = Path(line.strip())
        (pid_file,) = state_root.glob("seed-*/containerd.pid")
        importer = int(pid_file.read_text())
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        # What the next node start finds: the import's containerd still running, a layer
        # still mounted in the half-made store.
        assert _running(importer)
        assert leftovers.mounts_under(partial)

        seed = containerd.ensure_seed([archive])

        assert not _running(importer)
        assert leftovers.mounts_under(short_dir) == []
        assert not partial.exists()
        assert list(state_root.iterdir()) == []
        assert (seed / containerd.COMPLETE).exists()
    finally:
        owner.kill()
        owner.wait()
        statedir.sweep(state_root)
        leftovers.unmount_under(short_dir)
    # The store works: a containerd on a linked copy of it has the image.
    check = short_dir / "check"
    check.mkdir()
    containerd.link_root(seed, check / "root")
    with containerd.private_containerd(check, check / "root") as socket:
        ctr = ["ctr", "--address", str(socket), "--namespace", containerd.NAMESPACE]
        listed = subprocess.run(
            [*ctr, "images", "list", "--quiet"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    assert PAUSE_IMAGE in listed
