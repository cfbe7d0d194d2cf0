"""Where the cluster's programs come from: $KUBEBUILDER_ASSETS first, then the build cache."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from matchops_devenv import toolchain


def _executable(path: Path, script: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}")
    path.chmod(0o755)
    return path


def test_cache_dir_follows_matchops_cache(tmp_path: Path) -> None:
    assert toolchain.cache_dir({"MATCHOPS_CACHE": str(tmp_path)}) == tmp_path
    assert toolchain.bin_dir({"MATCHOPS_CACHE": str(tmp_path)}) == tmp_path / "bin"
    assert toolchain.cache_dir({}) == toolchain.REPO_ROOT / ".cache"


def test_assets_are_used_when_they_hold_the_program(tmp_path: Path) -> None:
    etcd = _executable(tmp_path / "assets" / "etcd")

    assert toolchain.from_assets("etcd", {"KUBEBUILDER_ASSETS": str(etcd.parent)}) == etcd
    assert toolchain.from_assets("kubectl", {"KUBEBUILDER_ASSETS": str(etcd.parent)}) is None
    assert toolchain.from_assets("etcd", {}) is None


def test_a_non_executable_asset_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "etcd").write_text("not a program")

    assert toolchain.from_assets("etcd", {"KUBEBUILDER_ASSETS": str(tmp_path)}) is None


def test_programs_all_in_assets_need_no_build(tmp_path: Path) -> None:
    names = ("etcd", "kube-apiserver", "kubectl")
    for name in names:
        _executable(tmp_path / "assets" / name)
    env = {"KUBEBUILDER_ASSETS": str(tmp_path / "assets"), "MATCHOPS_CACHE": str(tmp_path)}

    found = toolchain.programs(*names, env=env)

    assert found == {name: tmp_path / "assets" / name for name in names}
    assert not (tmp_path / "bin").exists()


def test_unknown_program_fails_with_the_build_script_named(tmp_path: Path) -> None:
    env = {"MATCHOPS_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}

    with pytest.raises(toolchain.ToolchainError, match=r"build\.sh failed"):
        toolchain.program("kube-nonexistent", env=env)


def test_reported_version_is_what_the_program_says(tmp_path: Path) -> None:
    apiserver = _executable(tmp_path / "kube-apiserver", 'echo "Kubernetes v1.30.0"\n')
    broken = _executable(tmp_path / "broken", "echo 'unknown flag: --version' >&2; exit 1\n")

    assert toolchain.reported_version(apiserver) == "v1.30.0"
    with pytest.raises(toolchain.ToolchainError, match="unknown flag: --version"):
        toolchain.reported_version(broken)


@pytest.mark.parametrize(
    ("apiserver", "kubelet", "unsupported"),
    [
        ("v1.37.2", "v1.37.2", False),
        ("v1.37.0", "v1.37.2", False),  # the policy is per minor release
        ("v1.37.2", "v1.34.0", False),  # older kubelets are supported
        ("v1.30.0", "v1.37.2", True),
        ("v1.37.2", "v2.0.0", True),
        ("", "v1.37.2", False),  # unknown: nothing to say
    ],
)
def test_only_a_kubelet_newer_than_the_api_server_is_unsupported_skew(
    apiserver: str, kubelet: str, unsupported: bool
) -> None:
    problem = toolchain.kubelet_skew(apiserver, kubelet)

    assert (problem is not None) == unsupported
    if problem is not None:
        assert f"kubelet {kubelet} is newer than the API server {apiserver}" in problem


def _without_assets() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "KUBEBUILDER_ASSETS"}


@pytest.mark.integration
def test_built_programs_report_the_pinned_version() -> None:
    built = toolchain.programs("kube-apiserver", "kubelet", "kubectl", env=_without_assets())

    assert toolchain.reported_version(built["kube-apiserver"]) == toolchain.KUBERNETES_VERSION
    assert toolchain.reported_version(built["kubelet"]) == toolchain.KUBERNETES_VERSION
    client = subprocess.run(
        [str(built["kubectl"]), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(client.stdout)["clientVersion"]["gitVersion"] == toolchain.KUBERNETES_VERSION


@pytest.mark.integration
def test_a_built_program_linked_into_kubebuilder_assets_is_used_and_not_built(
    tmp_path: Path,
) -> None:
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "kubectl").symlink_to(toolchain.program("kubectl", env=_without_assets()))
    # A Go that fails at once: a build, if one started, would not take minutes to show.
    no_go = _executable(tmp_path / "no-go" / "go", "echo 'go was run' >&2; exit 1\n").parent
    env = {
        **_without_assets(),
        "PATH": f"{no_go}:{os.environ['PATH']}",
        "MATCHOPS_CACHE": str(tmp_path / "cache"),
    }

    def build(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(toolchain.BUILD_SCRIPT), "kubectl"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    with_assets = {**env, "KUBEBUILDER_ASSETS": str(assets)}
    done = build(with_assets)

    assert (done.returncode, done.stderr) == (0, "")
    assert not (tmp_path / "cache").exists()
    assert toolchain.programs("kubectl", env=with_assets) == {"kubectl": assets / "kubectl"}
    # Without the assets, the same run builds kubectl (and here fails, at the stand-in Go).
    without = build(env)
    assert without.returncode != 0
    assert "go was run" in without.stderr
