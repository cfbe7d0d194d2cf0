"""The project image and the pause image, built with podman and run the way a cluster runs them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from matchops_devenv import images
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.containerd import private_containerd
from matchops_devenv.images import LocalImage
from matchops_devenv.ports import free_port
from matchops_devenv.procs import Service
from matchops_devenv.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.image]

ENTRY_POINTS = ("matchops-operator", "matchops-worker", "matchops")
# What a restricted Pod Security profile with readOnlyRootFilesystem gives a container.
RESTRICTED = ("--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges")
HARDENED = (*RESTRICTED, "--network=none")
SIZE_LIMIT = 300 * 1000 * 1000
REPO = Path(__file__).resolve().parents[2]
# Where each package's files come from in the source tree (the CRDs ship inside the operator).
PACKAGE_SOURCES = {
    "matchops_operator": "operator/matchops_operator",
    "matchops_operator/crds": "crds",
    "matchops_worker": "workers/matchops_worker",
}


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the image is made of: edits made during the run cannot race the checks."""
    snapshot = tmp_path_factory.mktemp("image-source")
    for path in [REPO / "Dockerfile", REPO / ".dockerignore", *images.context_files(REPO)]:
        target = snapshot / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return snapshot


@pytest.fixture(scope="module")
def project_image(source_tree: Path) -> LocalImage:
    return images.ensure_project_image(repo=source_tree)


@pytest.fixture(scope="module")
def pause_image() -> LocalImage:
    return images.ensure_pause_image()


def run_in(image: LocalImage, *command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` in a hardened container of the image (by id: a rebuild cannot swap it)."""
    return subprocess.run(
        ["podman", "run", "--rm", *HARDENED, image.image_id, *command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def inspect(image: LocalImage, template: str) -> str:
    done = subprocess.run(
        ["podman", "image", "inspect", "--format", template, image.image_id],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.parametrize("program", ENTRY_POINTS)
def test_entry_points_start_on_a_read_only_root(project_image: LocalImage, program: str) -> None:
    done = run_in(project_image, program, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()


def test_image_holds_the_sources_it_was_built_from(
    project_image: LocalImage, source_tree: Path
) -> None:
    expected: dict[str, str] = {}
    for installed, source in PACKAGE_SOURCES.items():
        for path in (source_tree / source).rglob("*"):
            if path.is_file():
                relative = path.relative_to(source_tree / source).as_posix()
                expected[f"{installed}/{relative}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    digest_installed = (
        "import hashlib, json, pathlib, sysconfig\n"
        "site = pathlib.Path(sysconfig.get_paths()['purelib'])\n"
        "print(json.dumps({p.relative_to(site).as_posix(): hashlib.sha256(p.read_bytes())"
        ".hexdigest() for top in ('matchops_operator', 'matchops_worker')"
        " for p in (site / top).rglob('*') if p.is_file() and '__pycache__' not in p.parts}))"
    )
    done = run_in(project_image, "python", "-c", digest_installed)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected


def test_runs_as_a_numeric_non_root_user(project_image: LocalImage) -> None:
    # Numeric in the image config, so the kubelet can enforce runAsNonRoot.
    assert inspect(project_image, "{{.Config.User}}") == "65532:65532"
    done = run_in(project_image, "id", "-u")
    assert done.stdout.strip() == "65532", done.stderr


def test_no_build_tools_in_the_final_image(project_image: LocalImage) -> None:
    tools = "gcc cc c++ g++ clang make ld as uv"
    done = run_in(
        project_image,
        "sh",
        "-c",
        f"for t in {tools}; do command -v $t; done; ls -d /opt/uv /src 2>/dev/null; true",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


def test_entry_points_load_from_precompiled_bytecode(project_image: LocalImage) -> None:
    # `python -v` says "code object from '<source>.py'" for every module it had to compile;
    # with a read-only root that work would be redone on every start.
    load_entry_points = (
        "from importlib.metadata import entry_points\n"
        "for ep in entry_points(group='console_scripts'):\n"
        "    if ep.name.startswith('matchops'):\n"
        "        ep.load()\n"
    )
    done = run_in(project_image, "python", "-v", "-c", load_entry_points)
    lines = done.stderr.splitlines()
    # Without the verbose import trace, what is left is the error, if any.
    assert done.returncode == 0, "\n".join(
        line for line in lines if not line.startswith(("#", "import ", "Python ", "Type "))
    )
    compiled = [
        line
        for line in lines
        if line.startswith("# code object from") and not line.rstrip("'").endswith(".pyc")
    ]
    assert compiled == []


def http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1.0).status_code
    except httpx.HTTPError:
        return None


def test_worker_serves_health_and_stops_on_sigterm(
    project_image: LocalImage, vhost: Vhost, database: str
) -> None:
    port = free_port()
    name = f"matchops-worker-test-{os.getpid()}"
    env = {
        "MATCHOPS_AMQP_URL": vhost.url,
        "MATCHOPS_DATABASE_DSN": database,
        "MATCHOPS_METRICS_PORT": str(port),
        "MATCHOPS_DECLARE_TOPOLOGY": "true",
    }
    # The broker and the database listen on loopback: the container shares the host's network.
    subprocess.run(
        ["podman", "run", "-d", "--name", name, *RESTRICTED, "--network=host"]
        + [f"--env={key}={value}" for key, value in env.items()]
        + [project_image.image_id, "matchops-worker"],
        capture_output=True,
        check=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def logs() -> str:
            return subprocess.run(["podman", "logs", name], capture_output=True, text=True).stderr

        wait_for(lambda: http_status(f"{base}/readyz") == 200, "/readyz", 60, diagnose=logs)
        assert http_status(f"{base}/healthz") == 200, logs()
        # PID 1 of the container: a SIGTERM it did not handle would end in SIGKILL at the end
        # of the grace period (exit code 137).
        subprocess.run(["podman", "stop", "-t", "60", name], capture_output=True, check=True)
        code = subprocess.run(
            ["podman", "inspect", "--format", "{{.State.ExitCode}}", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert code == "0", subprocess.run(["podman", "logs", name], capture_output=True, text=True)
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)


def test_image_size(project_image: LocalImage, capsys: pytest.CaptureFixture[str]) -> None:
    size = int(inspect(project_image, "{{.Size}}"))
    with capsys.disabled():
        print(f"\n{project_image.name}: {size / 1e6:.0f} MB ({project_image.image_id[:12]})")
    # A bound, not a figure: build tools or a second Python leaking in would cross it.
    assert size < SIZE_LIMIT


def test_pause_image_holds_one_static_program(pause_image: LocalImage) -> None:
    done = subprocess.run(
        ["podman", "run", "--rm", *HARDENED, pause_image.image_id, "-v"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pause 3.10")
    assert inspect(pause_image, "{{len .RootFS.Layers}}") == "1"


def test_pause_image_stops_at_once_on_sigterm(pause_image: LocalImage) -> None:
    name = f"matchops-pause-test-{os.getpid()}"
    subprocess.run(
        ["podman", "run", "-d", "--name", name, *HARDENED, pause_image.image_id],
        capture_output=True,
        check=True,
    )
    try:
        # A program that ignored SIGTERM would be killed at the end of the grace period, with
        # exit code 137; the pause program exits 0 on SIGTERM itself.
        subprocess.run(["podman", "stop", "-t", "60", name], capture_output=True, check=True)
        code = subprocess.run(
            ["podman", "inspect", "--format", "{{.State.ExitCode}}", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert code == "0"
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)


def children_of(pid: int) -> dict[int, str]:
    """pid → state of every process whose parent is `pid`."""
    found: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found[int(stat.parent.name)] = fields[0]
    return found


@pytest.fixture
def pause_in_pid_namespace(tmp_path: Path) -> Iterator[tuple[Service, int]]:
    """The pause program as PID 1 of a new PID namespace, the way a pod sandbox runs it."""
    binary = images.compile_pause(tmp_path / "pause")
    service = Service(
        "pause",
        ["unshare", "--pid", "--fork", "--kill-child", str(binary)],
        state_dir=tmp_path,
    )
    service.start()
    assert service.process is not None
    holder = service.process.pid
    (pause_pid,) = wait_for(lambda: children_of(holder), "unshare to start pause", 5, interval=0.02)
    yield service, pause_pid
    service.stop(timeout=5)


def test_pause_reaps_orphans_in_its_namespace(
    pause_in_pid_namespace: tuple[Service, int],
) -> None:
    service, pause_pid = pause_in_pid_namespace
    # A shell in the namespace starts a sleeper and exits: the sleeper is orphaned and the
    # namespace's init, pause, inherits it.
    subprocess.run(
        ["nsenter", "--target", str(pause_pid), "--pid", "--", "sh", "-c", "sleep 0.5 & exit 0"],
        check=True,
    )
    wait_for(
        lambda: children_of(pause_pid), "the orphan to be reparented to pause", 5, interval=0.02
    )
    # Once it exits, a reaping init leaves no zombie behind.
    wait_for(lambda: not children_of(pause_pid), "pause to reap the orphan", 5, interval=0.02)
    assert service.running()


def test_pause_exits_zero_on_sigterm(pause_in_pid_namespace: tuple[Service, int]) -> None:
    service, pause_pid = pause_in_pid_namespace
    os.kill(pause_pid, signal.SIGTERM)
    assert service.process is not None
    # unshare reports the exit status of its child.
    assert service.process.wait(timeout=5) == 0


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[str]:
    """A private containerd (no CRI) on a socket of its own; its address."""
    with private_containerd(tmp_path, tmp_path / "root") as socket:
        yield str(socket)


def test_archives_import_into_containerd_and_run(
    containerd: str, project_image: LocalImage, pause_image: LocalImage
) -> None:
    for image in (pause_image, project_image):
        assert image.archive is not None
        images.import_archive(image.archive, containerd, namespace="matchops-test")
    ctr = ["ctr", "--address", containerd, "--namespace", "matchops-test"]
    listed = subprocess.run(
        [*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {pause_image.name, project_image.name} <= set(listed)
    # Unpacked and runnable by containerd itself, with no registry involved.
    run = subprocess.run(
        [*ctr, "run", "--rm", pause_image.name, f"pause-{os.getpid()}", "/pause", "-v"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("pause 3.10")
