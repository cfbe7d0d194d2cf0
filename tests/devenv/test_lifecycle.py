"""Starting and stopping the control plane leaves nothing behind, even after a crash."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from matchops_devenv import statedir, toolchain
from matchops_devenv.access import ClusterAccess
from matchops_devenv.controlplane import ControlPlane

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")


def processes_referring_to(path: Path) -> list[int]:
    """Live processes whose command line names `path`."""
    marker = str(path.resolve()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def recorded_pids(state_dir: Path) -> dict[str, int]:
    return {name: int((state_dir / name / f"{name}.pid").read_text()) for name in COMPONENTS}


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path / "cluster")
    plane.start()
    pids = plane.pids()
    assert len(pids) == len(COMPONENTS)
    assert sorted(processes_referring_to(tmp_path)) == sorted(pids)

    plane.stop()

    assert processes_referring_to(tmp_path) == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not (tmp_path / "cluster" / "owner").exists()


class Up:
    """`python -m matchops_devenv cluster up [flags]` running in the background."""

    def __init__(self, state_dir: Path, *flags: str) -> None:
        self.state_dir = state_dir
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "matchops_devenv",
                "cluster",
                "--state-dir",
                str(state_dir),
                "up",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output: list[str] = []

    def wait_ready(self) -> Path:
        """The kubeconfig path printed once the cluster is ready."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if line.startswith("cluster: kubeconfig "):
                return Path(line.removeprefix("cluster: kubeconfig ").strip())
        stderr = self.process.stderr.read() if self.process.stderr else ""
        pytest.fail(f"cluster up exited before it was ready: {''.join(self.output)}{stderr}")


def cli(state_dir: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matchops_devenv", "cluster", "--state-dir", str(state_dir), action],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = Up(tmp_path / "clusters" / "dev")
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()
    statedir.sweep(tmp_path / "clusters")


def test_cluster_up_serves_until_cluster_down(up: Up) -> None:
    kubeconfig = up.wait_ready()
    access = ClusterAccess(kubeconfig, "", toolchain.program("kubectl"))
    assert access.kubectl("get", "namespace", "default", "-o", "name").stdout.strip() == (
        "namespace/default"
    )
    assert cli(up.state_dir, "status").returncode == 0
    second = cli(up.state_dir, "up")
    assert second.returncode == 1
    assert f"already run by process {up.process.pid}" in second.stderr

    down = cli(up.state_dir, "down")

    assert down.returncode == 0, down.stderr
    assert "cluster: stopped" in down.stdout
    assert up.process.wait(timeout=30) == 0
    assert processes_referring_to(up.state_dir) == []
    assert cli(up.state_dir, "status").returncode == 1


def test_crashed_cluster_is_swept_by_the_next_claim(up: Up) -> None:
    up.wait_ready()
    pids = recorded_pids(up.state_dir)

    os.kill(up.process.pid, signal.SIGKILL)
    up.process.wait()

    # The components outlive their owner, as after any crash.
    assert sorted(processes_referring_to(up.state_dir)) == sorted(pids.values())
    assert cli(up.state_dir, "status").returncode == 1

    assert statedir.sweep(up.state_dir.parent) == [up.state_dir]

    assert processes_referring_to(up.state_dir) == []
    assert not up.state_dir.exists()


def test_cluster_down_after_a_crash_stops_the_leftovers(up: Up) -> None:
    up.wait_ready()
    os.kill(up.process.pid, signal.SIGKILL)
    up.process.wait()

    down = cli(up.state_dir, "down")

    assert down.returncode == 0, down.stderr
    assert "cluster: stopped" in down.stdout
    assert processes_referring_to(up.state_dir) == []
