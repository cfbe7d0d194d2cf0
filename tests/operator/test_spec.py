"""The typed spec: defaults, and errors that name the field."""

from __future__ import annotations

import pytest
from matchops_operator.spec import SpecError, parse_spec

MINIMAL = {
    "broker": {"secretRef": {"name": "rabbitmq", "key": "url"}},
    "database": {"secretRef": {"name": "postgres", "key": "dsn"}},
}


def test_minimal_spec_gets_every_default() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.scraper is None
    assert spec.broker.queue is None
    assert spec.broker.queue_type == "quorum"
    assert spec.broker.retry.delays == ("10s", "1m", "5m")
    assert spec.broker.retry.delay_seconds == (10.0, 60.0, 300.0)
    assert spec.broker.deletion_policy == "Retain"
    workers = spec.workers
    assert (workers.min_replicas, workers.max_replicas) == (0, 10)
    assert workers.target_backlog_per_replica == 500
    assert workers.target_drain_seconds == 60
    assert workers.scale_down_delay_seconds == 300
    assert (workers.prefetch, workers.batch_size, workers.batch_wait_seconds) == (200, 200, 0.2)


def test_scraper_defaults() -> None:
    spec = parse_spec({**MINIMAL, "scraper": {"image": "s:1", "schedule": "@daily"}})
    assert spec.scraper is not None
    assert spec.scraper.time_zone == "UTC"
    assert spec.scraper.suspend is False
    assert spec.scraper.args == ()


def test_unknown_fields_from_a_newer_crd_are_ignored() -> None:
    spec = parse_spec({**MINIMAL, "futureField": 1})
    assert spec.broker.secret_ref.name == "rabbitmq"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"broker": {}}, "spec.broker.secretRef: Field required"),
        ({"workers": {"minReplicas": -1}}, "spec.workers.minReplicas"),
        ({"workers": {"batchWait": "5"}}, "spec.workers.batchWait"),
        ({"broker": {**MINIMAL["broker"], "queueType": "stream"}}, "spec.broker.queueType"),
        (
            {"broker": {**MINIMAL["broker"], "retry": {"delays": ["10x"]}}},
            "spec.broker.retry.delays",
        ),
        (
            {"workers": {"minReplicas": 5, "maxReplicas": 2}},
            "spec.workers.minReplicas (5) must not exceed spec.workers.maxReplicas (2)",
        ),
        (
            {"workers": {"env": [{"name": "MATCHOPS_QUEUE", "value": "other"}]}},
            "spec.workers.env: Value error, sets MATCHOPS_QUEUE, which the operator sets",
        ),
    ],
)
def test_errors_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec({**MINIMAL, **change})
