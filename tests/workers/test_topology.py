import pytest
from matchops_worker.topology import (
    Binding,
    TopologyError,
    build_topology,
)


def test_defaults_follow_the_queue_name() -> None:
    topology = build_topology("matches")
    assert topology.exchange == "matches"
    assert topology.routing_keys == ("matches",)
    assert topology.dead_letter_queue == "matches.dlq"
    assert topology.queue_type == "quorum"
    assert topology.retry_delays == (10.0, 60.0, 300.0)
    assert topology.bindings == (Binding("matches", "matches", "matches"),)


def test_classic_main_queue_has_no_arguments_so_celery_can_redeclare_it() -> None:
    topology = build_topology("matches", queue_type="classic")
    main = topology.queues[0]
    assert (main.name, main.purpose, main.arguments) == ("matches", "main", {})


def test_quorum_queues_carry_their_type() -> None:
    topology = build_topology("matches", retry_delays=["1s"])
    assert [q.arguments["x-queue-type"] for q in topology.queues] == ["quorum"] * 3


def test_retry_queues_return_expired_messages_to_the_main_queue() -> None:
    topology = build_topology("matches", queue_type="classic", retry_delays=["10s", "1m"])
    retry = {q.name: q.arguments for q in topology.queues if q.purpose == "retry"}
    assert retry == {
        "matches.retry.10s": {
            "x-message-ttl": 10_000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "matches",
        },
        "matches.retry.1m": {
            "x-message-ttl": 60_000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "matches",
        },
    }


def test_quorum_retry_queues_dead_letter_at_least_once() -> None:
    topology = build_topology("matches", retry_delays=["1s"])
    retry = topology.queues[1].arguments
    assert retry["x-dead-letter-strategy"] == "at-least-once"
    assert retry["x-overflow"] == "reject-publish"


def test_retry_queue_for_each_attempt_then_none() -> None:
    topology = build_topology("m", retry_delays=["1s", "60s", "1m"])
    assert [topology.retry_queue_for(n) for n in (1, 2, 3, 4)] == [
        "m.retry.1s",
        "m.retry.1m",
        "m.retry.1m",
        None,
    ]
    assert topology.retry_queues == ("m.retry.1s", "m.retry.1m")
    with pytest.raises(ValueError, match="count from 1"):
        topology.retry_queue_for(0)


def test_no_retry_delays_means_dead_letter_at_once() -> None:
    topology = build_topology("m", retry_delays=[])
    assert topology.retry_queue_for(1) is None
    assert [q.purpose for q in topology.queues] == ["main", "dead-letter"]


def test_policy_dead_letters_main_queue_and_limits_quorum_deliveries() -> None:
    (policy,) = build_topology("match.es", delivery_limit=5).policies
    assert policy.name == "matchops.match.es"
    assert policy.body() == {
        "pattern": r"^match\.es$",
        "definition": {
            "dead-letter-exchange": "",
            "dead-letter-routing-key": "match.es.dlq",
            "delivery-limit": 5,
        },
        "priority": 10,
        "apply-to": "queues",
    }


def test_classic_policy_has_no_delivery_limit() -> None:
    (policy,) = build_topology("m", queue_type="classic").policies
    assert "delivery-limit" not in policy.definition


def test_routing_keys_deduplicated_and_bound() -> None:
    topology = build_topology("m", exchange="ex", routing_keys=["a", "b", "a"])
    assert topology.bindings == (Binding("ex", "m", "a"), Binding("ex", "m", "b"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queue_type": "stream"}, "queue type 'stream'"),
        ({"retry_delays": ["0s"]}, "at least 1ms"),
        ({"retry_delays": ["soon"]}, "invalid duration"),
        ({"dead_letter_queue": "m"}, "must differ"),
        ({"exchange": "amq.direct"}, "reserved prefix"),
        ({"delivery_limit": 0}, "delivery limit"),
        ({"routing_keys": ["k" * 256]}, "longer than 255"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((TopologyError, ValueError), match=message):
        build_topology("m", **kwargs)  # type: ignore[arg-type]


def test_long_queue_name_refused() -> None:
    with pytest.raises(TopologyError, match="longer than 255 bytes"):
        build_topology("q" * 250)


def test_topology_is_a_value() -> None:
    assert build_topology("m") == build_topology("m", exchange="m", routing_keys=["m"])
    assert hash(build_topology("m")) == hash(build_topology("m"))
