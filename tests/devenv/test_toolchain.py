"""Where the cluster's programs come from: $KUBEBUILDER_ASSETS first, then the build cache."""

from pathlib import Path

import pytest
from matchops_devenv import toolchain


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
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
