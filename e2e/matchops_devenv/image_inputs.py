"""What the local images are made from: recipe stamps, the build context, Debian mirrors.

Pure functions: they read no files and run nothing, so the rules that decide whether an image
is rebuilt are tested on their own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"


def stamp_of(parts: Mapping[str, bytes]) -> str:
    """A digest of named inputs; equal stamps mean the same recipe, whatever the order given."""
    digest = hashlib.sha256()
    for name in sorted(parts):
        data = parts[name]
        # Lengths delimit the fields, so moving bytes between a name and its content (or
        # between two inputs) always changes the stamp.
        encoded = name.encode()
        digest.update(f"{len(encoded)}:{len(data)}:".encode())
        digest.update(encoded)
        digest.update(data)
    return digest.hexdigest()


def archive_name(image: str, stamp: str) -> str:
    """File name of the saved archive of `image` built from the recipe `stamp`."""
    return f"{archive_prefix(image)}{stamp[:16]}.tar"


def archive_prefix(image: str) -> str:
    """The part of `archive_name` shared by every build of `image`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", image) + "-"


class DockerignoreError(ValueError):
    """A .dockerignore uses syntax that the build-context hash cannot follow."""


@dataclass(frozen=True)
class ContextRules:
    """Which paths of the repository are in the image's build context."""

    roots: tuple[str, ...]
    excluded_names: tuple[str, ...]

    def admits(self, path: str) -> bool:
        """Whether the repository-relative POSIX `path` is in the build context."""
        parts = PurePosixPath(path).parts
        if any(fnmatchcase(part, glob) for part in parts for glob in self.excluded_names):
            return False
        return any(parts[: len(root_parts)] == root_parts for root_parts in self._root_parts)

    @property
    def _root_parts(self) -> list[tuple[str, ...]]:
        return [PurePosixPath(root).parts for root in self.roots]


def parse_dockerignore(text: str) -> ContextRules:
    """Read an allowlist .dockerignore: `*`, then `!path` lines, then `**/glob` exclusions.

    Anything else raises, rather than letting the hash and the real build context differ.
    """
    lines = [line.strip() for line in text.splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    if not patterns or patterns[0] != "*":
        raise DockerignoreError(".dockerignore must start with `*` (an allowlist)")
    roots: list[str] = []
    excluded: list[str] = []
    for pattern in patterns[1:]:
        if pattern.startswith("!"):
            root = pattern[1:].strip("/")
            if not root or any(ch in root for ch in "*?[") or ".." in root.split("/"):
                raise DockerignoreError(f".dockerignore: `{pattern}` must name a plain path")
            roots.append(root)
        elif pattern.startswith("**/") and pattern[3:] and "/" not in pattern[3:]:
            excluded.append(pattern[3:])
        else:
            raise DockerignoreError(f".dockerignore: `{pattern}` is neither `!path` nor `**/glob`")
    return ContextRules(roots=tuple(roots), excluded_names=tuple(excluded))


def debian_mirrors(sources: Iterable[str], suite: str = "bookworm") -> tuple[str, str]:
    """The (main, security) mirror URIs for `suite` in apt sources, deb822 or one-line style.

    Debian's public mirrors are the fallback for whichever the sources do not name.
    """
    mirror: str | None = None
    security: str | None = None
    for uris, suites in _apt_entries(sources):
        if mirror is None and suite in suites:
            mirror = uris[0]
        if security is None and f"{suite}-security" in suites:
            security = uris[0]
    return (mirror or DEFAULT_MIRROR, security or DEFAULT_SECURITY_MIRROR)


def _apt_entries(sources: Iterable[str]) -> Iterable[tuple[list[str], list[str]]]:
    """(URIs, suites) of every binary `deb` entry, from deb822 stanzas and one-line lists."""
    for text in sources:
        for stanza in re.split(r"\n\s*\n", text):
            fields = _deb822_fields(stanza)
            if "uris" in fields:
                if (
                    "deb" in fields.get("types", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                ):
                    yield fields["uris"].split(), fields.get("suites", "").split()
                continue
            for line in stanza.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield [words[1]], [words[2]]


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, _, value = line.partition(":")
        if re.fullmatch(r"[A-Za-z-]+", key):
            fields[key.lower()] = value.strip()
    return fields
