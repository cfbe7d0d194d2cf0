"""The local environment's container images, built with podman and kept while their recipe holds.

- the Debian base (`localhost/matchops-base:bookworm`): debootstrap's minbase with Python 3.11,
  made by e2e/image/mkrootfs.sh and imported with `podman import`, for machines that cannot
  pull the public Python image;
- the pause image (`localhost/matchops-pause:3.10`): e2e/image/pause.c linked statically, alone
  in its image; the node's containerd runs it as every pod's sandbox;
- the project image (`localhost/matchops:dev`): the repository's Dockerfile on that base.

Each image carries the stamp of its recipe in a label and is kept as an archive in
`$MATCHOPS_CACHE/images`: an unchanged recipe costs a label lookup, and an image podman lost
comes back from its archive in seconds. `import_archive` loads an archive into a containerd.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matchops_devenv.image_inputs import (
    archive_name,
    archive_prefix,
    debian_mirrors,
    parse_dockerignore,
    stamp_of,
)
from matchops_devenv.toolchain import REPO_ROOT, cache_dir

RECIPES = REPO_ROOT / "e2e" / "image"
STAMP_LABEL = "dev.matchops.recipe"

BASE_IMAGE = "localhost/matchops-base:bookworm"
PAUSE_IMAGE = "localhost/matchops-pause:3.10"
PROJECT_IMAGE = "localhost/matchops:dev"

BASE_CONFIG = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)
# The user Kubernetes' own pause image runs as.
PAUSE_CONFIG = ('ENTRYPOINT ["/pause"]', "USER 65535:65535")
PAUSE_CFLAGS = ("-Os", "-static", "-s", "-Wall", "-Wextra", "-Werror")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(RuntimeError):
    """An image could not be made, saved or imported."""


@dataclass(frozen=True)
class LocalImage:
    """An image in podman's store and its archive in the cache.

    The archive is a docker archive (pause and project images, for `ctr images import`) or the
    root file system tarball the base was imported from; None when the cache lost that tarball
    but podman still holds the base.
    """

    name: str
    stamp: str
    archive: Path | None
    image_id: str


def images_dir() -> Path:
    """Where rootfs tarballs, image archives, build logs and downloaded packages are kept."""
    path = cache_dir() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One image build at a time per cache: concurrent test runs share the archives."""
    with (images_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: Sequence[str], what: str, log: Path | None = None) -> str:
    """Run a command; its output goes to `log` when given. Fail with the output's tail."""
    _require(argv[0])
    if log is None:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise ImageError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{output}")
        return done.stdout
    with log.open("w") as out:
        code = subprocess.run(
            list(argv), stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise ImageError(f"{what} failed (exit {code}); log {log}:\n{tail}")
    return ""


def _require(program: str) -> None:
    if shutil.which(program) is None:
        raise ImageError(f"{program} not found: `make deps` installs what the images need")


def _podman_image(name: str) -> tuple[str, str] | None:
    """(id, recipe stamp) of `name` in podman's store, or None if it is not there."""
    _require("podman")
    done = subprocess.run(
        [
            "podman",
            "image",
            "inspect",
            "--format",
            f'{{{{.Id}}}} {{{{index .Labels "{STAMP_LABEL}"}}}}',
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    image_id, _, stamp = done.stdout.strip().partition(" ")
    return image_id, stamp


def _replace_archive(name: str, stamp: str, write: Path) -> Path:
    """Move a finished archive into place and drop the archives of earlier recipes."""
    directory = images_dir()
    target = directory / archive_name(name, stamp)
    write.replace(target)
    pattern = re.compile(re.escape(archive_prefix(name)) + r"[0-9a-f]{16}\.tar")
    for old in directory.iterdir():
        if old != target and pattern.fullmatch(old.name):
            old.unlink()
    return target


def _save(name: str, stamp: str) -> Path:
    """`podman save` the image as a docker archive, which `ctr images import` reads as is."""
    partial = images_dir() / f".{archive_name(name, stamp)}.partial"
    partial.unlink(missing_ok=True)
    _run(
        ["podman", "save", "--format", "docker-archive", "-o", str(partial), name], f"saving {name}"
    )
    return _replace_archive(name, stamp, partial)


def _ready(name: str, stamp: str, archive: Path) -> LocalImage | None:
    """The image when podman has it at this stamp (loaded back from its archive if lost)."""
    found = _podman_image(name)
    if (found is None or found[1] != stamp) and archive.is_file():
        _run(["podman", "load", "-i", str(archive)], f"loading {archive}")
        found = _podman_image(name)
    if found is None or found[1] != stamp or not archive.is_file():
        return None
    return LocalImage(name=name, stamp=stamp, archive=archive, image_id=found[0])


def _import(tarball: Path, name: str, config: Sequence[str], stamp: str) -> str:
    """`podman import` a root file system tarball with its configuration; the image's id."""
    changes = [f"LABEL {STAMP_LABEL}={stamp}", *config]
    _run(
        ["podman", "import", *(f"--change={change}" for change in changes), str(tarball), name],
        f"importing {tarball} as {name}",
    )
    found = _podman_image(name)
    if found is None or found[1] != stamp:
        raise ImageError(f"podman import reported success but {name} is not in the store")
    return found[0]


def _report(what: str, started: float) -> None:
    print(f"{what} in {time.monotonic() - started:.1f}s", file=sys.stderr)


# --- the Debian base ------------------------------------------------------------------------


def base_stamp() -> str:
    """The base image's recipe: the rootfs script and the image configuration."""
    return stamp_of(
        {
            "mkrootfs.sh": (RECIPES / "mkrootfs.sh").read_bytes(),
            "config": "\n".join(BASE_CONFIG).encode(),
        }
    )


def _apt_sources() -> list[str]:
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    return [
        path.read_text(errors="replace")
        for path in files
        if path.is_file() and path.suffix in {".list", ".sources"}
    ]


def ensure_base_image(name: str = BASE_IMAGE) -> LocalImage:
    """The Debian base image, made from Debian packages when its recipe changed."""
    stamp = base_stamp()
    rootfs = images_dir() / archive_name(name, stamp)
    with _locked():
        found = _podman_image(name)
        if found is not None and found[1] == stamp:
            kept = rootfs if rootfs.is_file() else None
            return LocalImage(name=name, stamp=stamp, archive=kept, image_id=found[0])
        if not rootfs.is_file():
            _make_rootfs(name, stamp)
        started = time.monotonic()
        image_id = _import(rootfs, name, BASE_CONFIG, stamp)
        _report(f"imported {name}", started)
        return LocalImage(name=name, stamp=stamp, archive=rootfs, image_id=image_id)


def _make_rootfs(name: str, stamp: str) -> Path:
    if os.geteuid() != 0:
        raise ImageError(
            "making the Debian base image runs debootstrap and chroot, which need root: "
            "run `sudo make base-image` once (later builds reuse it)"
        )
    directory = images_dir()
    mirror, security = debian_mirrors(_apt_sources())
    partial = directory / f".{archive_name(name, stamp)}.partial"
    log = directory / "base-image.log"
    print(f"making {name} from {mirror} (a few minutes; log {log})", file=sys.stderr)
    started = time.monotonic()
    _run(
        [str(RECIPES / "mkrootfs.sh"), str(partial), mirror, security, str(directory / "debs")],
        "debootstrap of the base image",
        log=log,
    )
    _report(f"made the root file system of {name}", started)
    return _replace_archive(name, stamp, partial)


# --- the pause image ------------------------------------------------------------------------


def pause_stamp() -> str:
    """The pause image's recipe: the program, its compiler and flags, the image configuration."""
    compiler = _run(["gcc", "--version"], "gcc --version").splitlines()[0]
    return stamp_of(
        {
            "pause.c": (RECIPES / "pause.c").read_bytes(),
            "gcc": " ".join((compiler, *PAUSE_CFLAGS)).encode(),
            "config": "\n".join(PAUSE_CONFIG).encode(),
        }
    )


def compile_pause(output: Path) -> Path:
    """Compile e2e/image/pause.c into a static executable at `output`."""
    _run(["gcc", *PAUSE_CFLAGS, "-o", str(output), str(RECIPES / "pause.c")], "compiling pause.c")
    return output


def _owned_by_root(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    return member


def ensure_pause_image(name: str = PAUSE_IMAGE) -> LocalImage:
    """The pause image, compiled and imported when its recipe changed."""
    stamp = pause_stamp()
    with _locked():
        ready = _ready(name, stamp, images_dir() / archive_name(name, stamp))
        if ready is not None:
            return ready
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=images_dir()) as work:
            binary = compile_pause(Path(work) / "pause")
            layer = Path(work) / "rootfs.tar"
            with tarfile.open(layer, "w") as tar:
                tar.add(binary, arcname="pause", filter=_owned_by_root)
            image_id = _import(layer, name, PAUSE_CONFIG, stamp)
        archive = _save(name, stamp)
        _report(f"built {name}", started)
        return LocalImage(name=name, stamp=stamp, archive=archive, image_id=image_id)


# --- the project image ----------------------------------------------------------------------


def project_version(repo: Path = REPO_ROOT) -> str:
    """The version in pyproject.toml, for the image's version label."""
    with (repo / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
        return version


def context_files(repo: Path = REPO_ROOT) -> list[Path]:
    """The files .dockerignore lets into the build context, sorted."""
    rules = parse_dockerignore((repo / ".dockerignore").read_text())
    found: list[Path] = []
    for root in rules.roots:
        top = repo / root
        candidates = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        found.extend(p for p in candidates if rules.admits(p.relative_to(repo).as_posix()))
    return sorted(found)


def project_stamp(base_id: str, build_args: dict[str, str], repo: Path = REPO_ROOT) -> str:
    """The project image's inputs: Dockerfile, build context, build arguments, base image."""
    parts = {
        "Dockerfile": (repo / "Dockerfile").read_bytes(),
        ".dockerignore": (repo / ".dockerignore").read_bytes(),
        "base-image-id": base_id.encode(),
        "build-args": "\n".join(f"{k}={v}" for k, v in sorted(build_args.items())).encode(),
    }
    for path in context_files(repo):
        relative = path.relative_to(repo).as_posix()
        # The executable bit survives COPY, so it is part of what the image is made of.
        mode = "x" if os.access(path, os.X_OK) else "-"
        parts[f"context/{relative}:{mode}"] = path.read_bytes()
    return stamp_of(parts)


def ensure_project_image(
    name: str = PROJECT_IMAGE, base: str = BASE_IMAGE, repo: Path = REPO_ROOT
) -> LocalImage:
    """The project image built from the Dockerfile on `base`, unless its inputs are unchanged.

    The local Debian base is made first when `base` names it; any other base must already be
    in podman's store.
    """
    if base == BASE_IMAGE:
        base_id = ensure_base_image(base).image_id
    else:
        found = _podman_image(base)
        if found is None:
            raise ImageError(f"base image {base} is not in podman's store: pull or build it first")
        base_id = found[0]
    build_args = {"BASE_IMAGE": base, "VERSION": project_version(repo)}
    stamp = project_stamp(base_id, build_args, repo)
    with _locked():
        ready = _ready(name, stamp, images_dir() / archive_name(name, stamp))
        if ready is not None:
            return ready
        previous = _podman_image(name)
        log = images_dir() / f"{archive_prefix(name)}build.log"
        print(f"building {name} on {base} (log {log})", file=sys.stderr)
        started = time.monotonic()
        argv = [
            "podman",
            "build",
            "--network",
            "host",
            "--label",
            f"{STAMP_LABEL}={stamp}",
            "--tag",
            name,
            "--file",
            str(repo / "Dockerfile"),
        ]
        for key, value in {**build_args, "REVISION": stamp}.items():
            argv += ["--build-arg", f"{key}={value}"]
        ca_bundle = Path(os.environ.get("SSL_CERT_FILE") or HOST_CA_BUNDLE)
        if ca_bundle.is_file():
            # The host's trust store, for networks whose TLS is intercepted by a proxy.
            argv += ["--secret", f"id=ca-bundle,src={ca_bundle}"]
        _run([*argv, str(repo)], f"building {name}", log=log)
        _report(f"built {name}", started)
        archive = _save(name, stamp)
        found = _podman_image(name)
        if found is None or found[1] != stamp:
            raise ImageError(f"podman build reported success but {name} is not in the store")
        if previous is not None and previous[0] != found[0]:
            _drop_build(*previous)
        return LocalImage(name=name, stamp=stamp, archive=archive, image_id=found[0])


def _drop_build(image_id: str, stamp: str) -> None:
    """Remove a replaced build: its image and its builder stage (buildah labels both).

    Whatever is still in use, by a container or another tag, podman refuses to remove, and
    that is fine: this only keeps rebuilds from piling up.
    """
    leftovers = [image_id]
    if stamp:
        filters = ["--filter", "dangling=true", "--filter", f"label={STAMP_LABEL}={stamp}"]
        leftovers += subprocess.run(
            ["podman", "images", "--quiet", "--no-trunc", *filters],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
    for image in leftovers:
        subprocess.run(["podman", "rmi", image], capture_output=True, check=False)


# --- containerd -----------------------------------------------------------------------------


def import_archive(
    archive: Path,
    address: str,
    namespace: str = "k8s.io",
    snapshotter: str | None = None,
    ctr: str = "ctr",
) -> None:
    """Load an image archive into the containerd at `address` (its socket), in `namespace`.

    Pods then use the image without a registry, with `imagePullPolicy: Never` or IfNotPresent.
    """
    argv = [ctr, "--address", address, "--namespace", namespace, "images", "import"]
    if snapshotter:
        argv += ["--snapshotter", snapshotter]
    _run([*argv, str(archive)], f"importing {archive} into containerd at {address}")


# --- command line ---------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add `images base|pause|project|import` to the environment's command line."""
    parser = commands.add_parser("images", help="build the local container images")
    actions = parser.add_subparsers(dest="action", required=True)
    base = actions.add_parser("base", help=f"make {BASE_IMAGE} from Debian packages")
    base.set_defaults(run=_reporting(lambda args: ensure_base_image()))
    pause = actions.add_parser("pause", help=f"build {PAUSE_IMAGE}")
    pause.set_defaults(run=_reporting(lambda args: ensure_pause_image()))
    project = actions.add_parser("project", help=f"build the project image ({PROJECT_IMAGE})")
    project.add_argument("--tag", default=PROJECT_IMAGE, help="(default: %(default)s)")
    project.add_argument("--base", default=BASE_IMAGE, help="base image (default: %(default)s)")
    project.set_defaults(run=_reporting(lambda args: ensure_project_image(args.tag, args.base)))
    load = actions.add_parser("import", help="load image archives into a containerd")
    load.add_argument("--address", required=True, help="containerd's socket")
    load.add_argument("--namespace", default="k8s.io", help="(default: %(default)s)")
    load.add_argument("--snapshotter", help="(default: containerd's)")
    load.add_argument("archives", nargs="+", type=Path)
    load.set_defaults(run=_run_import)


def _reporting(
    ensure: Callable[[argparse.Namespace], LocalImage],
) -> Callable[[argparse.Namespace], int]:
    """A command that makes an image and prints its name, id and archive (for scripts)."""

    def run(args: argparse.Namespace) -> int:
        try:
            image = ensure(args)
        except ImageError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"{image.name} {image.image_id[:12]} {image.archive or ''}".rstrip())
        return 0

    return run


def _run_import(args: argparse.Namespace) -> int:
    try:
        for archive in args.archives:
            import_archive(archive, args.address, args.namespace, args.snapshotter)
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
