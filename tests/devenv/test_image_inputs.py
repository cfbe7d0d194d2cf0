"""What decides whether a local image is rebuilt: recipe stamps, build context, mirrors."""

from __future__ import annotations

from pathlib import Path

import pytest
from matchops_devenv.image_inputs import (
    DEFAULT_MIRROR,
    DEFAULT_SECURITY_MIRROR,
    DockerignoreError,
    archive_name,
    archive_prefix,
    debian_mirrors,
    parse_dockerignore,
    stamp_of,
)

REPO = Path(__file__).resolve().parents[2]


def test_stamp_ignores_the_order_inputs_are_given_in() -> None:
    forward = {"Dockerfile": b"FROM x", "uv.lock": b"lock"}
    backward = dict(reversed(list(forward.items())))
    assert stamp_of(forward) == stamp_of(backward)


@pytest.mark.parametrize(
    ("changed", "why"),
    [
        ({"Dockerfile": b"FROM y", "uv.lock": b"lock"}, "content"),
        ({"Containerfile": b"FROM x", "uv.lock": b"lock"}, "name"),
        ({"Dockerfile": b"FROM x"}, "an input removed"),
        ({"Dockerfile": b"FROM x", "uv.lock": b"lock", "README.md": b""}, "an empty input added"),
        ({"Dockerfile": b"FROM xuv.lock", "": b"lock"}, "bytes moved between inputs"),
        ({"Dockerfile": b"FROM ", "xuv.lock": b"lock"}, "bytes moved from content to name"),
    ],
)
def test_stamp_changes_with_any_input(changed: dict[str, bytes], why: str) -> None:
    assert stamp_of({"Dockerfile": b"FROM x", "uv.lock": b"lock"}) != stamp_of(changed), why


def test_archive_names_are_per_image_and_recipe() -> None:
    stamp = "0123456789abcdef" + "f" * 48
    assert (
        archive_name("localhost/matchops:dev", stamp)
        == "localhost_matchops_dev-0123456789abcdef.tar"
    )
    assert archive_name("localhost/matchops:dev", stamp).startswith(
        archive_prefix("localhost/matchops:dev")
    )
    assert archive_prefix("localhost/matchops:dev") != archive_prefix("localhost/matchops:dev2")


ALLOWLIST = """\
# comment
*
!pyproject.toml
!operator/matchops_operator
!crds/
**/__pycache__
**/*.pyc
"""


@pytest.mark.parametrize(
    ("path", "admitted"),
    [
        ("pyproject.toml", True),
        ("operator/matchops_operator/main.py", True),
        ("operator/matchops_operator/desired/worker.py", True),
        ("crds/matchops.dev_matchingestions.yaml", True),
        ("operator/matchops_operator/__pycache__/main.cpython-311.pyc", False),
        ("operator/matchops_operator/stray.pyc", False),
        ("operator/other/main.py", False),
        ("operator/matchops_operator_extra/x.py", False),
        ("pyproject.toml.orig", False),
        ("tests/test_x.py", False),
        (".venv/bin/python", False),
    ],
)
def test_context_rules_follow_the_allowlist(path: str, admitted: bool) -> None:
    assert parse_dockerignore(ALLOWLIST).admits(path) is admitted


@pytest.mark.parametrize(
    "text",
    [
        "!pyproject.toml\n",  # not an allowlist
        "*\n!operator/*.py\n",  # a glob in an include
        "*\n!../outside\n",
        "*\n.venv\n",  # an exclusion that is not `**/glob`
        "*\n**/build/output\n",
    ],
)
def test_dockerignore_syntax_the_hash_cannot_follow_is_refused(text: str) -> None:
    with pytest.raises(DockerignoreError):
        parse_dockerignore(text)


def test_the_repository_dockerignore_is_understood() -> None:
    rules = parse_dockerignore((REPO / ".dockerignore").read_text())
    assert {"pyproject.toml", "uv.lock"} <= set(rules.roots)
    assert not rules.admits("tests/conftest.py")


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://sources.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirrors_from_deb822_sources() -> None:
    assert debian_mirrors([DEB822]) == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )


def test_mirrors_from_one_line_sources_with_options() -> None:
    sources = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n"
        "deb http://one.example/security bookworm-security main\n"
    )
    assert debian_mirrors([sources]) == (
        "http://one.example/debian",
        "http://one.example/security",
    )


def test_mirrors_skip_disabled_and_other_suites_then_fall_back() -> None:
    disabled = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n"
    other = "deb https://deb.nodesource.com/node_20.x nodistro main\n"
    assert debian_mirrors([disabled, other]) == (DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR)
