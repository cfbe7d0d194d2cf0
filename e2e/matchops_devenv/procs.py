"""Supervised background processes that leave nothing behind.

Every process runs in its own session (process group) with its output in a log file, and its
pid is recorded in a pid file under the environment's state directory. Stopping signals the
whole group. `reap_stale` stops what an earlier, crashed run left behind: it only ever signals
pids from its own pid files whose command line still names that state directory, never a
process found by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PIDFILE_SUFFIX = ".pid"


class ServiceError(RuntimeError):
    """A supervised process failed to start or become ready."""


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Service:
    """One long-running program of the environment."""

    name: str
    argv: Sequence[str]
    state_dir: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    user: str | None = None
    group: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / f"{self.name}{PIDFILE_SUFFIX}"

    def start(self) -> None:
        """Start the program in its own session, output to its log file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                user=self.user,
                group=self.group,
                start_new_session=True,
            )
        self.pid_path.write_text(str(self.process.pid))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
        """Poll `check` until it is true; fail with the log's tail if the program dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                code = self.process.returncode if self.process else None
                raise ServiceError(
                    f"{self.name} exited with {code} while starting; log {self.log_path}:\n"
                    f"{tail(self.log_path)}"
                )
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(interval)
        raise ServiceError(
            f"{self.name} not ready after {timeout:.0f}s; log {self.log_path}:\n"
            f"{tail(self.log_path)}"
        )

    def cpu_seconds(self) -> float:
        """CPU time used so far by the program and every process it started."""
        if self.process is None:
            return 0.0
        return tree_cpu_seconds(self.process.pid)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """Signal the process group, wait, then kill what is left."""
        if self.process is None:
            return
        stop_group(self.process.pid, timeout=timeout, sig=sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        self.pid_path.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """Whether `pid` runs: it exists and is not a zombie waiting for its parent to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def tree_cpu_seconds(root: int) -> float:
    """User and system CPU time of `root` and its descendants, their reaped children's too.

    By parentage, not by session: PostgreSQL's backends each start a session of their own.
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # After the command: state, ppid, ..., utime, stime, cutime, cstime (fields 14-17).
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(value) for value in fields[11:15])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def stop_group(pid: int, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to the process group led by `pid`; SIGKILL it if it outlives `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)


def reap_stale(state_dir: Path) -> list[int]:
    """Stop processes recorded in `state_dir`'s pid files by an earlier run that did not clean up.

    A pid is only signalled when its command line or working directory still refers to
    `state_dir`, so a recycled pid belonging to something else is left alone. The last started
    is stopped first, as a clean shutdown would: a server still holding its clients'
    connections (etcd under an API server) takes seconds to stop instead of a moment.
    """
    reaped: list[int] = []
    if not state_dir.is_dir():
        return reaped
    marker = str(state_dir.resolve())
    for pid_file in _last_started_first(state_dir.rglob(f"*{PIDFILE_SUFFIX}")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        if alive(pid) and _refers_to(pid, marker):
            stop_group(pid, timeout=5)
            reaped.append(pid)
        pid_file.unlink(missing_ok=True)
    return reaped


def _last_started_first(pid_files: Iterable[Path]) -> list[Path]:
    """Pid files by the time they were written (at each process's start), newest first."""

    def started(path: Path) -> int:
        try:
            return path.stat().st_mtime_ns
        except OSError:
            return 0

    return sorted(pid_files, key=started, reverse=True)


def _refers_to(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    if marker in cmdline:
        return True
    try:
        return os.readlink(f"/proc/{pid}/cwd").startswith(marker)
    except OSError:
        return False
