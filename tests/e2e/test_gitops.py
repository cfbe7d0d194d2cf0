"""A MatchIngestion as GitOps tools handle it, with the operator running in the cluster.

Flux, Argo CD (server-side apply) and `kubectl wait` read health from kstatus conventions and
re-apply the same manifest on every sync: the operator's own writes (finalizer, status,
annotations) and the API server's defaults must never show as drift.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.pipeline import Pipeline, sample
from matchops_devenv.rabbitmq import RabbitMQ

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.node, pytest.mark.e2e]

GITOPS = "gitops"


def without_scraper() -> dict[str, Any]:
    """The minimal sample with its producers elsewhere: nothing here depends on a scrape."""
    manifest = sample("minimal.yaml")
    del manifest["spec"]["scraper"]
    return manifest


def diff(pipeline: Pipeline) -> subprocess.CompletedProcess[str]:
    """`kubectl diff --server-side` of the pipeline's manifest as the GitOps field manager."""
    return pipeline.target.kubectl(
        "diff",
        "--server-side",
        f"--field-manager={GITOPS}",
        "-f",
        "-",
        input=yaml.safe_dump(pipeline.manifest),
        check=False,
    )


def conditions(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in pipeline.status().get("conditions", [])}


# The samples as shipped, scraper included: the API server's defaults for what they leave out
# (the scraper's timeZone, suspend, args and env among them) must not fight the applier.
@pytest.mark.parametrize("manifest_file", ["minimal.yaml", "full.yaml"])
def test_server_side_apply_twice_shows_no_diff(
    e2e_broker: RabbitMQ,
    e2e_vhost: Vhost,
    e2e_database: str,
    pipelines: Callable[[str], Pipeline],
    manifest_file: str,
) -> None:
    pipeline = pipelines(f"gitops-{manifest_file.removesuffix('.yaml')}")
    pipeline.create_secrets(e2e_vhost.url, e2e_database, e2e_broker.management_url)
    manifest = sample(manifest_file)
    pipeline.apply(manifest, field_manager=GITOPS)
    pipeline.wait("Ready")
    # A sync compares a resource at rest: the operator's last write of its handling is done.
    pipeline.wait_handled()
    applied = pipeline.ingestion()
    # The operator wrote its finalizer, status and annotations, the API server its defaults.
    assert "matchops.dev/finalizer" in applied["metadata"]["finalizers"]
    assert applied["spec"]["broker"]["queueType"] == "quorum"
    scraper = applied["spec"]["scraper"]
    assert {"timeZone", "suspend", "args", "env"} <= set(scraper), scraper

    first = diff(pipeline)
    assert (first.returncode, first.stdout) == (0, ""), first.stdout + first.stderr
    pipeline.apply(manifest, field_manager=GITOPS)
    second = diff(pipeline)
    assert (second.returncode, second.stdout) == (0, ""), second.stdout + second.stderr
    assert pipeline.ingestion()["metadata"]["generation"] == applied["metadata"]["generation"]

    # A change in Git is a diff, and only the changed field is.
    manifest["spec"].setdefault("workers", {})["maxReplicas"] = 4
    pipeline.manifest = pipeline.bind(manifest)
    changed = diff(pipeline)
    assert changed.returncode == 1, changed.stderr
    changes = [
        line
        for line in changed.stdout.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert [line.split() for line in changes if "generation" not in line] == [
        ["-", "maxReplicas:", "10"],
        ["+", "maxReplicas:", "4"],
    ]


def test_status_follows_kstatus_through_failure_and_recovery(
    e2e_broker: RabbitMQ,
    e2e_vhost: Vhost,
    e2e_database: str,
    pipelines: Callable[[str], Pipeline],
) -> None:
    pipeline = pipelines("gitops-health")
    manifest = without_scraper()
    pipeline.apply(manifest, field_manager=GITOPS)
    # No Secrets yet: a person must act, and kstatus readers are told so.
    pipeline.wait("Stalled")
    found = conditions(pipeline)
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "SecretNotFound")
    assert "Reconciling" not in found
    assert pipeline.status()["observedGeneration"] == 1
    assert {c["observedGeneration"] for c in found.values()} == {1}

    # A new generation that still fails is observed all the same.
    manifest["spec"]["workers"] = {"maxReplicas": 2}
    pipeline.apply(manifest, field_manager=GITOPS)
    assert pipeline.ingestion()["metadata"]["generation"] == 2
    pipeline.kubectl(
        "wait",
        f"matchingestion/{pipeline.name}",
        "--for=jsonpath={.status.observedGeneration}=2",
        "--timeout=60s",
        timeout=90,
    )
    found = conditions(pipeline)
    assert found["Stalled"]["status"] == "True"
    assert {c["observedGeneration"] for c in found.values()} == {2}

    pipeline.create_secrets(e2e_vhost.url, e2e_database, e2e_broker.management_url)
    pipeline.wait("Ready")
    found = conditions(pipeline)
    assert "Stalled" not in found
    assert "Reconciling" not in found
    assert {c["observedGeneration"] for c in found.values()} == {2}
