"""Which other MatchIngestions share a pipeline's queues (pure)."""

import pytest
from matchops_operator.sharing import (
    Endpoint,
    Neighbour,
    display_name,
    endpoint_of,
    search_scope,
    sharers,
)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("amqp://user:secret@rabbitmq:5672/", Endpoint("rabbitmq", 5672, "/")),
        ("amqp://rabbitmq", Endpoint("rabbitmq", 5672, "/")),
        ("amqp://u:p@RabbitMQ.ingest.svc/%2F", Endpoint("rabbitmq.ingest.svc", 5672, "/")),
        ("amqps://u:p@broker:5671/matches", Endpoint("broker", 5671, "matches")),
        ("amqps://broker/team%2Fa", Endpoint("broker", 5671, "team/a")),
        ("amqp://u:p@10.0.0.7:35672/ingest", Endpoint("10.0.0.7", 35672, "ingest")),
        ("http://rabbitmq:15672/", None),
        ("rabbitmq:5672", None),
        ("amqp://rabbitmq:port/", None),
        ("amqp:///vhost", None),
    ],
)
def test_a_url_names_a_broker_and_virtual_host_credentials_aside(
    url: str, endpoint: Endpoint | None
) -> None:
    assert endpoint_of(url) == endpoint


BROKER = Endpoint("rabbitmq", 5672, "/")
QUEUES = ["matches", "matches.retry.10s", "matches.dlq"]


def test_another_resource_on_the_same_queue_of_the_same_broker_shares_it() -> None:
    others = [
        Neighbour("copy", frozenset({"matches"}), same_secret=False, endpoint=BROKER),
        Neighbour("by-secret", frozenset({"matches.dlq"}), same_secret=True),
        Neighbour("u15", frozenset({"u15", "u15.dlq"}), same_secret=True),
    ]
    assert sharers(QUEUES, BROKER, others) == ["by-secret", "copy"]


@pytest.mark.parametrize(
    "endpoint",
    [
        Endpoint("rabbitmq", 5672, "staging"),
        Endpoint("other-broker", 5672, "/"),
        Endpoint("rabbitmq", 5671, "/"),
        None,
    ],
    ids=["other-vhost", "other-host", "other-port", "unreadable-secret"],
)
def test_the_same_queue_name_elsewhere_is_not_shared(endpoint: Endpoint | None) -> None:
    other = Neighbour("elsewhere", frozenset(QUEUES), same_secret=False, endpoint=endpoint)
    assert sharers(QUEUES, BROKER, [other]) == []


def test_a_pipeline_whose_own_url_is_unreadable_shares_only_by_secret() -> None:
    others = [
        Neighbour("same-url", frozenset(QUEUES), same_secret=False, endpoint=None),
        Neighbour("same-secret", frozenset(QUEUES), same_secret=True),
    ]
    assert sharers(QUEUES, None, others) == ["same-secret"]


@pytest.mark.parametrize(
    ("served", "scope"),
    [
        ((), None),
        (("ingest-*",), None),
        (("ingest", "!kube-system"), None),
        (("ingest",), ("ingest",)),
        (("staging", "ingest", "prod", "ingest"), ("ingest", "prod", "staging")),
    ],
    ids=["every-namespace", "glob", "negation", "own-only", "listed"],
)
def test_other_users_are_looked_for_wherever_the_operator_may_list_them(
    served: tuple[str, ...], scope: tuple[str, ...] | None
) -> None:
    assert search_scope(served, "ingest") == scope


def test_a_resource_of_another_namespace_is_named_with_its_namespace() -> None:
    assert display_name("ingest", "matches", "ingest") == "matches"
    assert display_name("staging", "matches", "ingest") == "staging/matches"
