"""Finding and removing what a node leaves on the host: processes, mounts, cgroups, files.

Everything is found by what it belongs to, never by a program's name: processes by the node's
cgroup or by the containerd socket in their command line, mounts by the node's directory,
cgroups by the node's cgroup name, log links and CNI cache files by the node's directory and
network name.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

from matchops_devenv.procs import alive

PROC = Path("/proc")
MOUNTINFO = PROC / "self" / "mountinfo"
# The kubelet links every container's log here, whatever its pod log directory is.
CONTAINER_LOG_LINKS = Path("/var/log/containers")
# libcni caches each attachment's result here; containerd 1.6 has no setting to move it.
CNI_RESULTS = Path("/var/lib/cni/results")
# The network containerd's CRI plugin names its loopback set-up in every pod after.
LOOPBACK_NETWORK = "cni-loopback"
# Where containerd-shim-runc-v2 puts its sockets, whatever containerd's state directory is.
SHIM_SOCKETS = Path("/run/containerd/s")
MNT_DETACH = 2


def _unescape(field: str) -> str:
    """mountinfo escapes spaces, tabs, newlines and backslashes as octal."""
    return field.encode().decode("unicode_escape")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    root = str(path.resolve())
    found: list[Path] = []
    for line in MOUNTINFO.read_text().splitlines():
        point = _unescape(line.split()[4])
        if point == root or point.startswith(root + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(path: Path, attempts: int = 5) -> None:
    """Detach every mount at or below `path` (stacked mounts too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(attempts):
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            if libc.umount2(str(point).encode(), MNT_DETACH) != 0:
                code = ctypes.get_errno()
                if code not in (errno.EINVAL, errno.ENOENT):
                    raise OSError(code, f"unmounting {point}: {os.strerror(code)}")
    remaining = mounts_under(path)
    if remaining:
        raise OSError(f"mounts under {path} survived unmounting: {remaining}")


def _mount_points(fstype: str) -> list[Path]:
    points = []
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[separator + 1] == fstype:
            points.append(Path(_unescape(fields[4])))
    return points


def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy: one per v1 controller, plus the unified one if mounted."""
    return sorted({*_mount_points("cgroup"), *_mount_points("cgroup2")})


def cgroup_dirs(name: str) -> list[Path]:
    """The directories of cgroup `name` (a top-level cgroup) in every hierarchy it exists in."""
    return [directory for h in cgroup_hierarchies() if (directory := h / name).is_dir()]


def create_cgroup(name: str) -> None:
    """Create top-level cgroup `name` in every hierarchy, ready for processes to join."""
    for hierarchy in cgroup_hierarchies():
        directory = hierarchy / name
        directory.mkdir(exist_ok=True)
        # A new v1 cpuset has no CPUs or memory nodes, and nothing can join it until it does.
        for setting in ("cpuset.cpus", "cpuset.mems"):
            own = directory / setting
            if own.exists() and not own.read_text().strip():
                own.write_text((hierarchy / setting).read_text())


def processes_in_cgroup(name: str) -> set[int]:
    """Pids of every process in cgroup `name` or below it, in any hierarchy."""
    pids: set[int] = set()
    for top in cgroup_dirs(name):
        for directory, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    text = (Path(directory) / "cgroup.procs").read_text()
                    pids.update(int(pid) for pid in text.split())
    return pids


def kill_cgroup(name: str, timeout: float = 15.0) -> set[int]:
    """SIGKILL every process in cgroup `name` until none is left; the pids killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while pids := processes_in_cgroup(name):
        if time.monotonic() > deadline:
            raise OSError(f"processes {sorted(pids)} in cgroup {name} survived SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.05)
    return killed


def remove_cgroup(name: str, timeout: float = 10.0) -> None:
    """Remove cgroup `name` and its descendants from every hierarchy (they must be empty)."""
    deadline = time.monotonic() + timeout
    for top in cgroup_dirs(name):
        for directory, _, _ in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    # A killed process leaves its cgroup a moment after it is reaped.
                    if error.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise OSError(f"removing cgroup {directory}: {error.strerror}") from error
                    time.sleep(0.05)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def shims_of(socket: Path) -> list[int]:
    """Pids of containerd shims started by the containerd listening on `socket`."""
    address = str(socket)
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))
        if any(a == "-address" and b == address for a, b in itertools.pairwise(argv)):
            found.append(int(entry.name))
    return found


def kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    """SIGKILL `pids` and wait until they have exited.

    They are not this process's children (shims are reparented when containerd dies), so they
    are watched in /proc, never reaped here: reaping any child would take the exit status of
    someone else's.
    """
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)


def shim_sockets(task_root: Path) -> list[Path]:
    """The sockets of the shims whose task bundles are under `task_root`.

    Each shim records its socket's address in its bundle's `address` file; only sockets in
    containerd's shim socket directory are returned.
    """
    sockets: list[Path] = []
    if not task_root.is_dir():
        return sockets
    for address_file in task_root.glob("*/*/address"):
        with contextlib.suppress(OSError):
            address = address_file.read_text().strip().removeprefix("unix://")
            socket = Path(address)
            if socket.parent == SHIM_SOCKETS:
                sockets.append(socket)
    return sockets


def remove_log_links(target_dir: Path, links_dir: Path = CONTAINER_LOG_LINKS) -> None:
    """Remove the kubelet's container log links that point into `target_dir`."""
    if not links_dir.is_dir():
        return
    root = str(target_dir.resolve()) + "/"
    for link in links_dir.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(root):
            link.unlink(missing_ok=True)


def remove_cni_results(
    network_name: str, sandbox_ids: list[str], results_dir: Path = CNI_RESULTS
) -> None:
    """Remove libcni's cached results of the node's pods.

    Those of its CNI network carry the network's name; those of the loopback network, which
    containerd sets up in every pod, carry the pod sandbox's id.
    """
    if not results_dir.is_dir():
        return
    patterns = [f"{network_name}-*", *(f"{LOOPBACK_NETWORK}-{sid}-*" for sid in sandbox_ids)]
    for pattern in patterns:
        for cached in results_dir.glob(pattern):
            cached.unlink(missing_ok=True)


def sandbox_ids(cri_state: Path) -> list[str]:
    """Ids of the pod sandboxes containerd's CRI plugin keeps state for under `cri_state`."""
    sandboxes = cri_state / "sandboxes"
    return sorted(p.name for p in sandboxes.iterdir()) if sandboxes.is_dir() else []


def remove_tree(path: Path) -> None:
    """Delete a node's directory, never crossing into a file system mounted below it.

    rm is several times faster than shutil.rmtree on an unpacked image's thousands of files.
    """
    if not path.exists():
        return
    done = subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise OSError(f"removing {path}: {done.stderr.strip()}")
