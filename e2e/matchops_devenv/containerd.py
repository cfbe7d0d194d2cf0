"""Image stores for the nodes' containerd, imported once per set of images and linked after.

Importing the project image into a fresh containerd (storing its blobs, unpacking its layers
into overlay snapshots) takes seconds on every start. Instead, the images are imported once
into a seed root in the cache, by a containerd of its own, and each node's containerd starts
on a hard-linked copy of that root: the blobs and unpacked layers are never written after
import (containers write to snapshots of their own), so nodes share them safely; the two
bolt databases containerd writes are copied instead of linked. A seed is keyed by the image
archives (whose names carry their recipe stamps) and containerd's version, so a rebuilt image
makes a new seed and the old one is removed.

The importing containerd runs in a state directory claimed from `statedir`: when the process
importing dies, the next claim stops that containerd by its pid file, and the next import
unmounts and removes the half-made store before starting again.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from matchops_devenv import images, leftovers, procs, statedir
from matchops_devenv.image_inputs import stamp_of
from matchops_devenv.nodeconfig import render_toml

NAMESPACE = "k8s.io"
SNAPSHOTTER = "overlayfs"
# The files containerd writes in its root; everything else in a seed is only ever read.
DATABASES = (
    Path("io.containerd.metadata.v1.bolt") / "meta.db",
    Path(f"io.containerd.snapshotter.v1.{SNAPSHOTTER}") / "metadata.db",
)
COMPLETE = "complete"
SOCKET = "containerd.sock"


class SeedError(RuntimeError):
    """An image store could not be made or copied."""


def seeds_dir() -> Path:
    return images.images_dir() / "containerd-seeds"


@contextlib.contextmanager
def _locked(exclusive: bool) -> Iterator[None]:
    """Seeds are made under an exclusive lock and copied under a shared one."""
    seeds_dir().mkdir(parents=True, exist_ok=True)
    with (seeds_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def containerd_version() -> str:
    try:
        done = subprocess.run(["containerd", "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        raise SeedError("containerd not found: `make deps` installs it") from None
    return done.stdout.strip()


def seed_key(archives: Sequence[Path], version: str) -> str:
    """The seed's name: what it holds and which containerd made it."""
    parts = {f"archive:{archive.name}": b"" for archive in archives}
    parts["containerd"] = version.encode()
    parts["snapshotter"] = SNAPSHOTTER.encode()
    return stamp_of(parts)[:16]


def _seed(key: str) -> Path:
    return seeds_dir() / key


def ensure_seed(archives: Sequence[Path]) -> Path:
    """The seed holding `archives`, imported first if no seed holds them yet."""
    key = seed_key(archives, containerd_version())
    seed = _seed(key)
    if (seed / COMPLETE).exists():
        return seed
    with _locked(exclusive=True):
        if not (seed / COMPLETE).exists():
            _make_seed(seed, archives)
        for other in seeds_dir().iterdir():
            if other.is_dir() and other != seed:
                _remove(other)
    return seed


def _make_seed(seed: Path, archives: Sequence[Path]) -> None:
    partial = seed.with_name(f".{seed.name}.partial")
    # A state directory of its own: if this process dies mid-import, the next claim stops the
    # import's containerd by its pid file and removes the directory.
    run = statedir.claim("seed")
    try:
        # What a crashed import left: the layer it was unpacking may still be mounted.
        _remove(partial)
        partial.mkdir(parents=True)
        try:
            with private_containerd(run, partial / "root") as socket:
                for archive in archives:
                    images.import_archive(archive, str(socket), NAMESPACE, SNAPSHOTTER)
        except (procs.ServiceError, images.ImageError) as error:
            raise SeedError(f"importing images into a new containerd store: {error}") from error
    finally:
        statedir.release(run)
    if leftovers.mounts_under(partial):
        raise SeedError(f"containerd left mounts in {partial} after importing")
    partial.replace(seed)
    (seed / COMPLETE).write_text("")


def private_config(directory: Path, root: Path) -> str:
    """The configuration of a containerd that runs no pods, with its files in `directory`.

    Its images and snapshots go to `root`; nothing goes to the host's /run, /var or /opt.
    """
    return render_toml(
        {
            "version": 2,
            "root": str(root),
            "state": str(directory / "state"),
            # No pods: the CRI plugin would only look for CNI and warn.
            "disabled_plugins": ["io.containerd.grpc.v1.cri"],
            "grpc": {"address": str(directory / SOCKET)},
            "plugins": {"io.containerd.internal.v1.opt": {"path": str(directory / "opt")}},
        }
    )


@contextlib.contextmanager
def private_containerd(directory: Path, root: Path) -> Iterator[Path]:
    """A containerd of `private_config` running until the block ends; its socket.

    `directory` must be short: containerd refuses long socket paths. What it leaves mounted
    under `directory` is unmounted after it stops.
    """
    config = directory / "config.toml"
    config.write_text(private_config(directory, root))
    socket = directory / SOCKET
    service = procs.Service(
        "containerd", ["containerd", "--config", str(config)], directory, cwd=directory
    )
    service.start()
    try:
        service.wait_ready(socket.is_socket, timeout=30)
        yield socket
    finally:
        service.stop(timeout=10)
        leftovers.unmount_under(directory)


def _remove(path: Path) -> None:
    """Delete an image store, unmounting first what an import that crashed left mounted."""
    leftovers.unmount_under(path)
    leftovers.remove_tree(path)


def remove_seeds() -> None:
    """Remove every image store: the next node imports its images again."""
    with _locked(exclusive=True):
        for seed in seeds_dir().iterdir():
            if seed.is_dir():
                _remove(seed)


def link_root(seed: Path, root: Path) -> None:
    """Make `root` (which must not exist) a containerd root holding the seed's images."""
    if root.exists():
        raise SeedError(f"{root} exists already")
    with _locked(exclusive=False):
        if not (seed / COMPLETE).exists():
            raise SeedError(f"image store {seed} was removed while in use")
        root.parent.mkdir(parents=True, exist_ok=True)
        # cp preserves what overlay layers need: ownership, modes, times and the xattrs
        # marking opaque directories.
        done = subprocess.run(
            ["cp", "-al", str(seed / "root"), str(root)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SeedError(f"linking {seed} into {root}: {done.stderr.strip()}")
    for database in DATABASES:
        linked = root / database
        if linked.exists():
            linked.unlink()
            shutil.copy2(seed / "root" / database, linked)
