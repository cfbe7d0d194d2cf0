"""`matchops replay`: dead letters back to where they were published, nothing lost."""

from __future__ import annotations

import json

import pika
import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_worker.deadletter import (
    ATTEMPTS_HEADER,
    ERROR_HEADER,
    EXCHANGE_HEADER,
    REASON_HEADER,
    REDELIVERED_HEADER,
    ROUTING_KEY_HEADER,
)
from matchops_worker.replay import NO_REASON, Destination, destination, reason_of, replayed_headers
from matchops_worker.topology import Topology, build_topology, declare

from .test_cli import matchops


def pipeline(queue_type: str = "classic") -> Topology:
    return build_topology(
        "matches", routing_keys=["matches", "matches.process"], queue_type=queue_type
    )


TOPOLOGY = pipeline()


def dead_letter(
    reason: str, routing_key: str = "matches.process", **extra: object
) -> dict[str, object]:
    return {
        REASON_HEADER: reason,
        ERROR_HEADER: f"{reason}: details",
        ATTEMPTS_HEADER: 3,
        EXCHANGE_HEADER: "matches",
        ROUTING_KEY_HEADER: routing_key,
        **extra,
    }


def test_a_dead_letter_goes_back_where_its_producer_published_it() -> None:
    assert destination(dead_letter("contract"), TOPOLOGY) == Destination(
        "matches", "matches.process"
    )
    # Published to the default exchange, straight to the queue.
    headers = {EXCHANGE_HEADER: "", ROUTING_KEY_HEADER: "matches"}
    assert destination(headers, TOPOLOGY) == Destination("", "matches")


def test_without_its_origin_a_dead_letter_goes_to_the_pipelines_first_key() -> None:
    assert destination(None, TOPOLOGY) == Destination("matches", "matches")
    assert destination({ROUTING_KEY_HEADER: 7}, TOPOLOGY) == Destination("matches", "matches")


def test_the_copy_loses_the_workers_verdict_and_keeps_the_rest() -> None:
    headers = replayed_headers(
        dead_letter("retries-exhausted", task="celery_tasks.x", **{REDELIVERED_HEADER: True})
    )
    assert headers == {
        EXCHANGE_HEADER: "matches",
        ROUTING_KEY_HEADER: "matches.process",
        "task": "celery_tasks.x",
    }


def test_reason_of_a_message_without_one() -> None:
    assert reason_of({REASON_HEADER: "too-large"}) == "too-large"
    assert reason_of({}) == NO_REASON
    assert reason_of(None) == NO_REASON


def fill_dead_letters(vhost: Vhost, queue_type: str = "classic") -> None:
    with vhost.channel() as channel:
        declare(channel, pipeline(queue_type))
        for number, reason in enumerate(
            [
                "retries-exhausted",
                "contract",
                "retries-exhausted",
                "invalid-json",
                "retries-exhausted",
            ]
        ):
            channel.basic_publish(
                "",
                TOPOLOGY.dead_letter_queue,
                json.dumps({"n": number}).encode(),
                pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=f"m{number}",
                    headers=dead_letter(reason, user="scraper"),
                ),
            )


@pytest.mark.integration
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_replay_by_reason_moves_the_chosen_and_keeps_the_others_in_order(
    vhost: Vhost, queue_type: str
) -> None:
    fill_dead_letters(vhost, queue_type)
    result = matchops("replay", "--reason", "retries-exhausted", url=vhost.url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["replayed"] == 3
    assert summary["kept"] == 2
    assert summary["replayed_by_reason"] == {"retries-exhausted": 3}
    assert summary["kept_by_reason"] == {"contract": 1, "invalid-json": 1}

    replayed = vhost.take("matches")
    assert [json.loads(m.body)["n"] for m in replayed] == [0, 2, 4]
    for message in replayed:
        assert REASON_HEADER not in message.headers
        assert ATTEMPTS_HEADER not in message.headers
        assert message.headers["user"] == "scraper"
        assert message.properties.delivery_mode == 2
        assert message.properties.content_type == "application/json"
    assert [m.properties.message_id for m in replayed] == ["m0", "m2", "m4"]

    kept = vhost.take(TOPOLOGY.dead_letter_queue)
    assert [json.loads(m.body)["n"] for m in kept] == [1, 3]
    assert [m.headers[REASON_HEADER] for m in kept] == ["contract", "invalid-json"]
    assert kept[0].headers[ERROR_HEADER] == "contract: details"


@pytest.mark.integration
def test_replay_with_a_limit_takes_the_oldest(vhost: Vhost) -> None:
    fill_dead_letters(vhost)
    result = matchops("replay", "--limit", "2", url=vhost.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["replayed"] == 2
    assert [json.loads(m.body)["n"] for m in vhost.take("matches")] == [0, 1]
    assert [json.loads(m.body)["n"] for m in vhost.take(TOPOLOGY.dead_letter_queue)] == [2, 3, 4]


@pytest.mark.integration
def test_a_replay_the_broker_cannot_route_leaves_the_message_in_the_dead_letter_queue(
    vhost: Vhost,
) -> None:
    with vhost.channel() as channel:
        declare(channel, TOPOLOGY)
        channel.basic_publish(
            "",
            TOPOLOGY.dead_letter_queue,
            b"{}",
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                headers=dead_letter("contract", routing_key="nowhere"),
            ),
        )
    result = matchops("replay", url=vhost.url)
    assert result.returncode == 1
    assert "unroutable" in result.stderr
    assert vhost.depth(TOPOLOGY.dead_letter_queue) == 1
    assert vhost.depth("matches") == 0
