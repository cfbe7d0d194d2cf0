"""The shipped samples parse into specs the operator accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from matchops_operator.desired.topology import topology_for
from matchops_operator.spec import API_VERSION, KIND, parse_spec

SAMPLES = Path(__file__).parents[2] / "manifests" / "samples"


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return loaded


@pytest.mark.parametrize("name", ["minimal.yaml", "full.yaml", "legacy-celery.yaml"])
def test_sample_is_a_valid_matchingestion(name: str) -> None:
    sample = load(name)
    assert sample["apiVersion"] == API_VERSION
    assert sample["kind"] == KIND
    spec = parse_spec(sample["spec"])
    topology_for(sample["metadata"]["name"], spec.broker)


def test_legacy_sample_matches_what_celery_declares() -> None:
    sample = load("legacy-celery.yaml")
    topology = topology_for(sample["metadata"]["name"], parse_spec(sample["spec"]).broker)
    assert topology.queue == "matches"
    assert topology.exchange == "matches"
    assert set(topology.routing_keys) == {"matches", "matches.process"}
    main = next(q for q in topology.queues if q.purpose == "main")
    assert main.arguments == {}  # Celery re-declares it plainly


def test_full_sample_sets_every_field() -> None:
    spec = parse_spec(load("full.yaml")["spec"])
    assert spec.model_fields_set == set(type(spec).model_fields)
    for part in (spec.scraper, spec.broker, spec.workers, spec.database):
        assert part is not None
        assert part.model_fields_set == set(type(part).model_fields)
