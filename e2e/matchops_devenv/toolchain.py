"""Where the cluster's programs (etcd, Kubernetes, helm) come from.

A program is taken from `$KUBEBUILDER_ASSETS` when that directory holds it (the envtest
convention for ready-made binaries), otherwise from `$MATCHOPS_CACHE/bin`, where
`e2e/toolchain/build.sh` builds it from the pinned Go modules. The build script is run for
programs not taken from `$KUBEBUILDER_ASSETS`: it returns at once when the binary is current
and rebuilds it when its module changed, so a stale binary is never used.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

# What build.sh builds; a program taken from $KUBEBUILDER_ASSETS may be another release.
KUBERNETES_VERSION = "v1.37.2"
SKEW_POLICY = "https://kubernetes.io/releases/version-skew-policy/"

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "e2e" / "toolchain" / "build.sh"


class ToolchainError(RuntimeError):
    """A cluster program could not be found or built."""


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """`$MATCHOPS_CACHE`, or `.cache` in the repository."""
    configured = env.get("MATCHOPS_CACHE")
    return Path(configured) if configured else REPO_ROOT / ".cache"


def bin_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where build.sh puts the programs it builds."""
    return cache_dir(env) / "bin"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def from_assets(name: str, env: Mapping[str, str] = os.environ) -> Path | None:
    """The program in `$KUBEBUILDER_ASSETS`, when that is set and holds it."""
    assets = env.get("KUBEBUILDER_ASSETS")
    if assets and _executable(Path(assets) / name):
        return Path(assets) / name
    return None


def program(name: str, env: Mapping[str, str] = os.environ) -> Path:
    """The path of a ready-to-run cluster program, building it first when needed."""
    return programs(name, env=env)[name]


def programs(*names: str, env: Mapping[str, str] = os.environ) -> dict[str, Path]:
    """Paths of several cluster programs, building the missing or stale ones in one go."""
    found = {name: path for name in names if (path := from_assets(name, env)) is not None}
    to_build = [name for name in names if name not in found]
    if to_build:
        _build(to_build, env)
    for name in to_build:
        path = bin_dir(env) / name
        if not _executable(path):
            raise ToolchainError(f"{BUILD_SCRIPT} finished but {path} is not an executable")
        found[name] = path
    return found


def _build(names: list[str], env: Mapping[str, str]) -> None:
    # The build's progress and errors go straight to the terminal (or pytest's capture): a cold
    # build takes minutes and its compiler errors are what a user needs to see.
    result = subprocess.run(
        [str(BUILD_SCRIPT), *names],
        env=dict(env),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        raise ToolchainError(
            f"building {', '.join(names)} with {BUILD_SCRIPT} failed (exit {result.returncode});"
            " its output is above"
        )


def reported_version(program: Path) -> str:
    """The Kubernetes version a Kubernetes server program says it is (`--version`)."""
    done = subprocess.run(
        [str(program), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    match = re.fullmatch(r"Kubernetes (v\S+)", done.stdout.strip())
    if done.returncode != 0 or match is None:
        raise ToolchainError(
            f"{program} --version gave no Kubernetes version (exit {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()!r}"
        )
    return match.group(1)


def kubelet_skew(apiserver: str, kubelet: str) -> str | None:
    """What is wrong with running a kubelet of version `kubelet` against `apiserver`, if anything.

    Kubernetes supports kubelets up to the API server's minor version, never newer.
    """
    server, node = _minor(apiserver), _minor(kubelet)
    if server is None or node is None or node <= server:
        return None
    return (
        f"kubelet {kubelet} is newer than the API server {apiserver}, which Kubernetes does not "
        f"support ({SKEW_POLICY}): use a kube-apiserver of {kubelet}'s minor release or newer "
        "in $KUBEBUILDER_ASSETS, or unset it so that build.sh builds both"
    )


def _minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"v?(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None
