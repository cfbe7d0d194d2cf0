"""The Argo CD health check (manifests/argocd/health.lua), run by a real Lua 5.1 interpreter.

Argo CD runs health checks in gopher-lua, a Lua 5.1. Statuses come both from the operator's
own condition builder (what a cluster will really show) and from hand-written edge cases.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # type: ignore[import-untyped]  # lupa ships no type hints
import pytest
import yaml
from matchops_operator import conditions
from matchops_operator.conditions import Part
from matchops_operator.problems import retrying, stalled

from .render import MANIFESTS, kustomize

SCRIPT = (MANIFESTS / "argocd" / "health.lua").read_text()
HEALTH_KEY = "resource.customizations.health.matchops.dev_MatchIngestion"
NOW = "2025-01-01T06:00:00Z"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """Argo CD's verdict on `obj`: (status, message)."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    # Argo CD's sandbox has no file, process or module access; neither may the script need it.
    runtime.execute("os, io, require, dofile, loadfile, package = nil, nil, nil, nil, nil, nil")
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    verdict = runtime.execute(SCRIPT)
    return str(verdict["status"]), str(verdict["message"])


def ingestion(generation: int, status: dict[str, Any] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "matchops.dev/v1alpha1",
        "kind": "MatchIngestion",
        "metadata": {"name": "matches", "namespace": "ingest", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def reported(parts: list[Part], *, generation: int = 3, observed: int = 3) -> dict[str, Any]:
    """A MatchIngestion with the status the operator writes for these parts."""
    rendered = conditions.render(parts, generation=observed, now=NOW)
    return ingestion(generation, {"observedGeneration": observed, "conditions": rendered})


TOPOLOGY = Part(conditions.TOPOLOGY_READY, "ready", "TopologyDeclared", "exchange matches")
SCRAPER = Part(conditions.SCRAPER_READY, "ready", "ScraperScheduled", "CronJob runs daily")
WORKERS = Part(conditions.WORKERS_READY, "ready", "WorkersAvailable", "2 of 2 workers ready")
SECRET_MISSING = stalled("SecretNotFound", "Secret ingest/rabbitmq not found")
BROKER_DOWN = retrying("BrokerUnreachable", "cannot reach rabbitmq:5672")

CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "all parts ready": (
        reported([TOPOLOGY, SCRAPER, WORKERS]),
        "Healthy",
        "Ready: exchange matches; CronJob runs daily; 2 of 2 workers ready",
    ),
    "missing secret stalls": (
        reported([SECRET_MISSING.part(t) for t in conditions.PART_TYPES]),
        "Degraded",
        "SecretNotFound: Secret ingest/rabbitmq not found",
    ),
    "unreachable broker is retried": (
        reported([BROKER_DOWN.part(conditions.TOPOLOGY_READY), SCRAPER, WORKERS]),
        "Progressing",
        "BrokerUnreachable: cannot reach rabbitmq:5672",
    ),
    "workers rolling out": (
        reported(
            [
                TOPOLOGY,
                SCRAPER,
                Part(conditions.WORKERS_READY, "progressing", "WorkersProgressing", "1 of 3"),
            ]
        ),
        "Progressing",
        "WorkersProgressing: 1 of 3",
    ),
    "last scraper run failed": (
        reported(
            [
                TOPOLOGY,
                Part(conditions.SCRAPER_READY, "degraded", "LastRunFailed", "the Job failed"),
                WORKERS,
            ]
        ),
        "Degraded",
        "LastRunFailed: the Job failed",
    ),
    "status for an older generation": (
        reported([TOPOLOGY, SCRAPER, WORKERS], generation=4, observed=3),
        "Progressing",
        "Waiting for the matchops operator to observe generation 4 (status describes generation 3)",
    ),
    "stalled, then the spec was fixed": (
        reported([SECRET_MISSING.part(t) for t in conditions.PART_TYPES], generation=5, observed=4),
        "Progressing",
        "Waiting for the matchops operator to observe generation 5 (status describes generation 4)",
    ),
    "no status yet": (
        ingestion(1, None),
        "Progressing",
        "Waiting for the matchops operator to report status",
    ),
    "status without observedGeneration": (
        ingestion(1, {"conditions": []}),
        "Progressing",
        "Waiting for the matchops operator to observe this resource",
    ),
    "no conditions yet": (
        ingestion(1, {"observedGeneration": 1}),
        "Progressing",
        "Waiting for the Ready condition",
    ),
    "ready condition of an older generation": (
        ingestion(
            2,
            {
                "observedGeneration": 2,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Ready", "observedGeneration": 1}
                ],
            },
        ),
        "Progressing",
        "Waiting for the Ready condition of generation 2",
    ),
    "ready unknown": (
        ingestion(
            1,
            {
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Starting"}],
            },
        ),
        "Progressing",
        "Starting",
    ),
    "false stalled and reconciling conditions are ignored": (
        ingestion(
            1,
            {
                "observedGeneration": 1,
                "conditions": [
                    {"type": "Stalled", "status": "False", "reason": "NotStalled"},
                    {"type": "Reconciling", "status": "False", "reason": "Done"},
                    {"type": "Ready", "status": "True", "message": "all good"},
                ],
            },
        ),
        "Healthy",
        "all good",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_verdict(case: str) -> None:
    obj, status, message = CASES[case]
    assert health(obj) == (status, message)


def test_operator_status_always_has_ready_and_only_true_stalled_or_reconciling() -> None:
    """The premise of the health check: the operator writes kstatus-style conditions."""
    for parts in (
        [TOPOLOGY, SCRAPER, WORKERS],
        [SECRET_MISSING.part(t) for t in conditions.PART_TYPES],
        [BROKER_DOWN.part(conditions.TOPOLOGY_READY), SCRAPER, WORKERS],
    ):
        rendered = {c["type"]: c for c in conditions.render(parts, generation=1, now=NOW)}
        assert "Ready" in rendered
        for kind in ("Stalled", "Reconciling"):
            assert rendered.get(kind, {"status": "True"})["status"] == "True"


def test_kustomize_component_puts_the_script_into_argocd_cm(tmp_path: Path) -> None:
    (tmp_path / "argocd-cm.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                "data": {"url": "https://argocd.example"},
            }
        )
    )
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["argocd-cm.yaml"],
                "components": [os.path.relpath(MANIFESTS / "argocd", tmp_path)],
            }
        )
    )
    [config_map] = kustomize(tmp_path)
    assert config_map["metadata"]["name"] == "argocd-cm"
    assert config_map["data"] == {"url": "https://argocd.example", HEALTH_KEY: SCRIPT}
