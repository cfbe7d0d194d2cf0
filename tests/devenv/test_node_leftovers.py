"""Finding a node's files among others', and the registry of nodes, on scratch directories."""

import os
import subprocess
import time
from pathlib import Path

import pytest
from matchops_devenv import leftovers, noderegistry, procs, statedir


def test_only_log_links_into_the_node_directory_are_removed(tmp_path: Path) -> None:
    node, other, links = tmp_path / "node", tmp_path / "other", tmp_path / "links"
    for directory in (node, other, links):
        directory.mkdir()
    (links / "ours.log").symlink_to(node / "pod-logs" / "0.log")
    (links / "theirs.log").symlink_to(other / "0.log")
    (links / "file.log").write_text("not a link")
    leftovers.remove_log_links(node, links)
    assert sorted(p.name for p in links.iterdir()) == ["file.log", "theirs.log"]


def test_only_cni_results_of_the_node_network_and_its_sandboxes_are_removed(
    tmp_path: Path,
) -> None:
    names = [
        "matchops-0a1b2c-aaaa-eth0",
        "cni-loopback-aaaa-lo",
        "cni-loopback-bbbb-lo",
        "matchops-ffffff-cccc-eth0",
        "podman-dddd-eth0",
    ]
    for name in names:
        (tmp_path / name).write_text("{}")
    leftovers.remove_cni_results("matchops-0a1b2c", ["aaaa"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cni-loopback-bbbb-lo",
        "matchops-ffffff-cccc-eth0",
        "podman-dddd-eth0",
    ]


def test_shim_sockets_come_from_the_task_bundles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shim_dir = tmp_path / "s"
    monkeypatch.setattr(leftovers, "SHIM_SOCKETS", shim_dir)
    tasks = tmp_path / "tasks"
    (tasks / "k8s.io" / "abc").mkdir(parents=True)
    (tasks / "k8s.io" / "abc" / "address").write_text(f"unix://{shim_dir}/1234\n")
    (tasks / "k8s.io" / "def").mkdir()
    (tasks / "k8s.io" / "def" / "address").write_text("unix:///elsewhere/5678\n")
    assert leftovers.shim_sockets(tasks) == [shim_dir / "1234"]
    assert leftovers.shim_sockets(tmp_path / "missing") == []


def test_sandbox_ids_are_the_cri_sandbox_directories(tmp_path: Path) -> None:
    (tmp_path / "sandboxes" / "b").mkdir(parents=True)
    (tmp_path / "sandboxes" / "a").mkdir()
    assert leftovers.sandbox_ids(tmp_path) == ["a", "b"]
    assert leftovers.sandbox_ids(tmp_path / "none") == []


def test_killing_pids_leaves_the_exit_status_of_other_children_alone() -> None:
    finished = subprocess.Popen(["sh", "-c", "exit 3"])
    target = subprocess.Popen(["sleep", "60"])
    # Exited, not yet reaped: its status is waiting for this process.
    while procs.alive(finished.pid):
        time.sleep(0.01)

    leftovers.kill_pids([target.pid])

    assert not procs.alive(target.pid)
    assert finished.wait(timeout=5) == 3
    target.wait(timeout=5)


def test_mountinfo_escapes_are_decoded() -> None:
    assert leftovers._unescape(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MATCHOPS_RUN_DIR", str(tmp_path / "run"))
    proc_sys = tmp_path / "proc-sys"
    for key in noderegistry.KERNEL_TUNABLES:
        (proc_sys / key).parent.mkdir(parents=True, exist_ok=True)
        (proc_sys / key).write_text("0\n")
    monkeypatch.setattr(noderegistry, "PROC_SYS", proc_sys)
    monkeypatch.setattr(
        noderegistry,
        "HOST_DIRS",
        {
            tmp_path / "var-log-containers": (),
            tmp_path / "var-lib-cni": (),
            tmp_path / "var-lib-kubelet": ("device-plugins/kubelet.sock",),
        },
    )
    return tmp_path


def entry(node_id: str, owner: str) -> noderegistry.Entry:
    return noderegistry.Entry(node_id, owner, Path(f"/nodes/{node_id}"), "10.213.0.0/30")


def test_registered_nodes_are_listed_with_their_owner(registry: Path) -> None:
    mine = entry("0a1b2c", statedir.identity(os.getpid()))
    gone = entry("3d4e5f", "999999999 1")
    with noderegistry.locked():
        noderegistry.register(mine)
        noderegistry.register(gone)
        listed = noderegistry.entries()
    assert listed == [mine, gone]
    assert [e.alive() for e in listed] == [True, False]
    with noderegistry.locked():
        noderegistry.unregister("3d4e5f")
        assert noderegistry.entries() == [mine]


def test_host_settings_come_back_when_the_last_node_goes(registry: Path) -> None:
    proc_sys = noderegistry.PROC_SYS
    with noderegistry.locked():
        noderegistry.register(entry("0a1b2c", statedir.identity(os.getpid())))
        noderegistry.remember_host()
    # What the kubelet does at start, and the directories it and libcni create.
    (proc_sys / "kernel/panic").write_text("10\n")
    (proc_sys / "vm/overcommit_memory").write_text("1\n")
    (registry / "var-log-containers").mkdir()
    (registry / "var-lib-cni" / "results").mkdir(parents=True)
    (registry / "var-lib-kubelet" / "device-plugins").mkdir(parents=True)
    (registry / "var-lib-kubelet" / "device-plugins" / "kubelet.sock").write_text("")
    with noderegistry.locked():
        noderegistry.register(entry("3d4e5f", statedir.identity(os.getpid())))
        noderegistry.remember_host()  # a second node keeps the first record
        noderegistry.unregister("0a1b2c")
        assert noderegistry.restore_host() is False  # another node still runs
        assert (proc_sys / "kernel/panic").read_text() == "10\n"
        noderegistry.unregister("3d4e5f")
        assert noderegistry.restore_host() is True
    assert (proc_sys / "kernel/panic").read_text() == "0"
    assert (proc_sys / "vm/overcommit_memory").read_text() == "0"
    assert not (registry / "var-log-containers").exists()
    assert not (registry / "var-lib-cni").exists()
    assert not (registry / "var-lib-kubelet").exists()


def test_host_directories_with_other_files_are_kept(registry: Path) -> None:
    with noderegistry.locked():
        noderegistry.remember_host()
    (registry / "var-log-containers").mkdir()
    (registry / "var-log-containers" / "someone-else.log").write_text("")
    with noderegistry.locked():
        assert noderegistry.restore_host() is True
    assert (registry / "var-log-containers" / "someone-else.log").exists()
