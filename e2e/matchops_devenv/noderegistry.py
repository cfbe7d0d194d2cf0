"""Which nodes this machine runs, who owns each, and the host settings they share.

Nodes are registered in `$MATCHOPS_RUN_DIR` (default /run/matchops), one file per node id
with its owner (pid and start time), state directory and link network. The registry is what
makes a node's host objects (namespace, link, nat chain, cgroup) attributable: an object
whose id has no live owner is a leftover and is removed. Registering happens under a lock,
before any host object exists, so a node that is starting is never mistaken for a leftover.

The kubelet sets six kernel tunables at start (vm.overcommit_memory=1, kernel.panic=10, ...),
machine-wide and with no way to opt out but failing. Their values from before the first node
are kept here and written back when the last node is gone, with the directories the kubelet
and CNI create on the host (/var/log/containers, /var/lib/cni, /var/lib/kubelet for its device
plugin socket) removed if they did not exist before.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from matchops_devenv import statedir

KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
PROC_SYS = Path("/proc/sys")
# Directories the kubelet and libcni create on the host whatever they are configured with,
# and the files in them that only a node's programs put there.
HOST_DIRS: dict[Path, tuple[str, ...]] = {
    Path("/var/log/containers"): (),
    Path("/var/lib/cni"): (),
    # The kubelet's device manager serves this socket whatever its root directory is.
    Path("/var/lib/kubelet"): (
        "device-plugins/kubelet.sock",
        "device-plugins/kubelet_internal_checkpoint",
    ),
}


def registry_dir() -> Path:
    return Path(os.environ.get("MATCHOPS_RUN_DIR") or "/run/matchops")


@dataclass(frozen=True)
class Entry:
    """One registered node."""

    node_id: str
    owner: str
    state_dir: Path
    link: str

    def alive(self) -> bool:
        return statedir.owner_alive(self.owner)

    def to_json(self) -> str:
        return json.dumps(
            {"owner": self.owner, "state_dir": str(self.state_dir), "link": self.link}
        )

    @classmethod
    def from_json(cls, node_id: str, text: str) -> Entry:
        data = json.loads(text)
        return cls(node_id, str(data["owner"]), Path(data["state_dir"]), str(data["link"]))


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """The registry, held by this process alone while the block runs."""
    root = registry_dir()
    (root / "nodes").mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def entries() -> list[Entry]:
    """Every registered node, live or left over (call under `locked`)."""
    found = []
    for path in sorted((registry_dir() / "nodes").glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            found.append(Entry.from_json(path.stem, path.read_text()))
    return found


def register(entry: Entry) -> None:
    """Record a node (call under `locked`)."""
    path = registry_dir() / "nodes" / f"{entry.node_id}.json"
    partial = path.with_suffix(".partial")
    partial.write_text(entry.to_json())
    partial.replace(path)


def unregister(node_id: str) -> None:
    """Forget a node (call under `locked`)."""
    (registry_dir() / "nodes" / f"{node_id}.json").unlink(missing_ok=True)


def _host_file() -> Path:
    return registry_dir() / "host.json"


def remember_host() -> None:
    """Record the host settings a node changes, unless an earlier node already did.

    Call under `locked`, before the first kubelet starts.
    """
    if _host_file().exists():
        return
    record = {
        "kernel": {key: (PROC_SYS / key).read_text().strip() for key in KERNEL_TUNABLES},
        "absent_dirs": [str(path) for path in HOST_DIRS if not path.exists()],
    }
    _host_file().write_text(json.dumps(record, indent=2))


def restore_host() -> bool:
    """Put the recorded host settings back when no node is registered any more.

    Call under `locked`. True when something was restored.
    """
    path = _host_file()
    if entries() or not path.exists():
        return False
    record = json.loads(path.read_text())
    for key, value in record.get("kernel", {}).items():
        if key in KERNEL_TUNABLES:
            (PROC_SYS / key).write_text(value)
    for directory in map(Path, record.get("absent_dirs", [])):
        for leftover in HOST_DIRS.get(directory, ()):
            (directory / leftover).unlink(missing_ok=True)
        _remove_empty_tree(directory)
    path.unlink()
    return True


def _remove_empty_tree(top: Path) -> None:
    """Remove `top` if it holds nothing but empty directories (someone else's files stay)."""
    if not top.is_dir():
        return
    if any(not p.is_dir() or p.is_symlink() for p in top.rglob("*")):
        return
    shutil.rmtree(top, ignore_errors=True)
