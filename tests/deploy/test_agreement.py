"""One source of truth: the chart and the kustomize manifests install the same operator, and
both carry the CRD from crds/ unchanged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from matchops_operator.main import parse_args

from .render import (
    CRD_COPIES,
    CRDS,
    MANIFESTS,
    by_key,
    chart,
    env_of,
    kustomize,
    normalized,
    of_kind,
    operator_container,
    the,
)

# Each kustomization and the chart values that install the same thing.
PAIRS: dict[str, tuple[Path, dict[str, Any], str]] = {
    "base": (MANIFESTS / "base", {}, "matchops"),
    "namespaced": (MANIFESTS / "overlays" / "namespaced", {}, "ingest"),
    "cluster-wide": (
        MANIFESTS / "overlays" / "cluster-wide",
        {"watch": {"mode": "cluster"}, "rbac": {"secretNamespaces": ["ingest"]}},
        "matchops",
    ),
    "local": (
        MANIFESTS / "overlays" / "local",
        {
            "image": {"tag": "dev", "pullPolicy": "Never", "childPullPolicy": "IfNotPresent"},
        },
        "ingest",
    ),
}


def _crd_files() -> list[Path]:
    return sorted(CRDS.glob("matchops.dev_*.yaml"))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_chart_and_kustomize_install_the_same_objects(name: str) -> None:
    path, values, namespace = PAIRS[name]
    from_kustomize = by_key(
        o
        for o in kustomize(path)
        if o["kind"] != "Namespace"  # Helm installs into one
    )
    from_chart = by_key(chart(values, release="matchops", namespace=namespace))
    assert sorted(from_kustomize, key=str) == sorted(from_chart, key=str)
    for object_key, obj in from_chart.items():
        ours, theirs = normalized(obj), normalized(from_kustomize[object_key])
        if obj["kind"] == "Deployment":
            # Same env, in any order (kustomize patches insert variables at the front).
            for deployment in (ours, theirs):
                for container in deployment["spec"]["template"]["spec"]["containers"]:
                    container["env"] = sorted(container["env"], key=lambda v: v["name"])
        assert ours == theirs, f"{object_key} differs between the chart and {path}"


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_kustomize_operator_reads_the_settings_it_is_given(name: str) -> None:
    path, _, namespace = PAIRS[name]
    container = operator_container(kustomize(path))
    settings, _ = parse_args([], env_of(container, namespace))
    assert settings.worker_image == container["image"]
    assert settings.standalone is True
    expected_namespaces: tuple[str, ...] = () if name == "cluster-wide" else (namespace,)
    assert settings.namespaces == expected_namespaces


def test_an_overlay_image_also_becomes_the_workers_image(tmp_path: Path) -> None:
    # A user's overlay elsewhere on disk, pointing at the base by relative path.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    relative = os.path.relpath(MANIFESTS / "base", overlay)
    digest = "sha256:" + "0f" * 32
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [relative],
                "images": [
                    {
                        "name": "localhost/matchops",
                        "newName": "registry.example/x",
                        "digest": digest,
                    }
                ],
            }
        )
    )
    container = operator_container(kustomize(overlay))
    assert container["image"] == f"registry.example/x@{digest}"
    settings, _ = parse_args([], env_of(container, "matchops"))
    assert settings.worker_image == container["image"]


def test_crd_copies_equal_crds() -> None:
    sources = _crd_files()
    assert sources, "crds/ holds no CRD"
    for copy_dir in CRD_COPIES:
        copies = sorted(copy_dir.glob("*.yaml"))
        copies = [p for p in copies if p.name != "kustomization.yaml"]
        assert [p.name for p in copies] == [p.name for p in sources], (
            f"{copy_dir} is out of date: run `make manifests`"
        )
        for source, copied in zip(sources, copies, strict=True):
            assert copied.read_bytes() == source.read_bytes(), (
                f"{copied} differs from {source}: run `make manifests`"
            )


def test_kustomize_crd_kustomization_lists_every_crd() -> None:
    listed = yaml.safe_load((MANIFESTS / "crd" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in _crd_files()]


def test_rendered_crd_is_the_one_in_crds() -> None:
    sources = [yaml.safe_load(p.read_text()) for p in _crd_files()]
    expected = sorted((normalized(c) for c in sources), key=lambda c: c["metadata"]["name"])
    for rendered in (chart(), kustomize(MANIFESTS / "base")):
        crds = sorted(
            (normalized(c) for c in of_kind(rendered, "CustomResourceDefinition")),
            key=lambda c: c["metadata"]["name"],
        )
        assert crds == expected


def test_chart_crd_keeps_its_labels_and_is_kept_on_uninstall_unless_told() -> None:
    source = yaml.safe_load(_crd_files()[0].read_text())
    crd = the(chart(), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    dropped = the(chart({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in dropped["metadata"].get("annotations", {})
    assert of_kind(chart({"crds": {"install": False}}), "CustomResourceDefinition") == []


def test_samples_are_served_by_the_namespaced_and_local_overlays() -> None:
    samples = kustomize(MANIFESTS / "samples")
    assert samples
    assert {o["kind"] for o in samples} == {"MatchIngestion"}
    for overlay in ("namespaced", "local"):
        namespace = the(kustomize(MANIFESTS / "overlays" / overlay), "Namespace")
        assert {o["metadata"]["namespace"] for o in samples} == {namespace["metadata"]["name"]}
