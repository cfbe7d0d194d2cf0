"""Private state directories for local services, and the clean-up of crashed runs' leftovers.

Several test runs (and people) share a machine, so each launcher gets its own directory under a
per-user root, marked with the pid and start time of the Python process that owns it. A
directory whose owner is gone belongs to a run that crashed: its processes are stopped through
their pid files (`procs.reap_stale`) and the directory is removed. Directories of live owners,
other concurrent runs included, are never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from matchops_devenv.procs import reap_stale

OWNER_FILE = "owner"


def state_root() -> Path:
    """Where state directories live: $MATCHOPS_STATE_DIR or a per-user folder in the temp dir."""
    configured = os.environ.get("MATCHOPS_STATE_DIR")
    root = Path(configured) if configured else Path(tempfile.gettempdir())
    return root / f"matchops-devenv-{os.getuid()}"


def claim(kind: str, root: Path | None = None) -> Path:
    """A new empty directory for one service instance, after clearing crashed runs' leftovers."""
    root = root or state_root()
    root.mkdir(parents=True, exist_ok=True)
    # Services may run as their own system users (rabbitmq, postgres): they must reach their
    # directory through the root.
    root.chmod(0o755)
    sweep(root)
    path = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
    path.chmod(0o755)
    (path / OWNER_FILE).write_text(identity(os.getpid()))
    return path


def release(path: Path) -> None:
    """Remove a directory claimed by this process (its services must be stopped)."""
    shutil.rmtree(path, ignore_errors=True)


def sweep(root: Path) -> list[Path]:
    """Stop the processes of, and remove, state directories whose owner process is gone."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        owner = path / OWNER_FILE
        if not path.is_dir() or not owner.is_file():
            continue
        if owner_alive(owner.read_text()):
            continue
        reap_stale(path)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def identity(pid: int) -> str:
    """How an owner is recorded: its pid and kernel start time, which no reused pid repeats."""
    return f"{pid} {_start_time(pid)}"


def owner_alive(recorded: str) -> bool:
    """Whether the process recorded as `recorded` (see `identity`) still runs."""
    return live_owner(recorded) is not None


def live_owner(recorded: str) -> int | None:
    """The pid of the process recorded as `recorded` (see `identity`), if it still runs."""
    try:
        pid_text, start = recorded.split()
        pid = int(pid_text)
    except ValueError:
        return None
    return pid if _start_time(pid) == start else None


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot, or '' when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]


def run_as(user: str) -> str | None:
    """The system user a service should run as: `user` when we are root, else ourselves."""
    return user if os.geteuid() == 0 else None


def hand_over(path: Path, user: str | None) -> None:
    """Give a directory tree to the user a service runs as (no-op when that is us)."""
    if user is None:
        return
    for directory, _, files in os.walk(path):
        shutil.chown(directory, user, user)
        for name in files:
            shutil.chown(os.path.join(directory, name), user, user)
