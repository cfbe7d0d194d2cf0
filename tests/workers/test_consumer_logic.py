from typing import Any

import pika
import pytest
from matchops_worker.consumer import (
    ATTEMPTS_HEADER,
    MAX_ATTEMPTS,
    REDELIVERED_HEADER,
    Delivery,
    attempts_of,
    republished_headers,
)
from matchops_worker.contract import Reason, Rejection


@pytest.mark.parametrize(
    ("headers", "attempts"),
    [
        (None, 0),
        ({}, 0),
        ({ATTEMPTS_HEADER: 2}, 2),
        ({ATTEMPTS_HEADER: "3"}, 3),
        ({ATTEMPTS_HEADER: -4}, 0),
        ({ATTEMPTS_HEADER: "many"}, 0),
        ({ATTEMPTS_HEADER: True}, 0),
        ({ATTEMPTS_HEADER: None}, 0),
        # Past every retry delay, and still writable once incremented.
        ({ATTEMPTS_HEADER: 2**63 - 1}, MAX_ATTEMPTS),
        ({ATTEMPTS_HEADER: "1" + "0" * 30}, MAX_ATTEMPTS),
    ],
)
def test_attempts_of(headers: dict[str, Any] | None, attempts: int) -> None:
    assert attempts_of(headers) == attempts


def delivery(
    headers: dict[str, Any] | None, routing_key: str = "matches", redelivered: bool = False
) -> Delivery:
    return Delivery(
        tag=1,
        exchange="matches",
        routing_key=routing_key,
        properties=pika.BasicProperties(headers=headers),
        body=b"{}",
        parsed=Rejection(Reason.CONTRACT, "x"),
        attempts=attempts_of(headers),
        redelivered=redelivered,
    )


def test_republished_headers_keep_the_originals_and_add_ours() -> None:
    headers = republished_headers(delivery({"task": "t", "id": "1"}), 1)
    assert headers == {
        "task": "t",
        "id": "1",
        "x-matchops-attempts": 1,
        "x-matchops-original-routing-key": "matches",
        "x-matchops-original-exchange": "matches",
    }


def test_dead_letter_headers_carry_reason_and_error() -> None:
    headers = republished_headers(delivery(None), 0, "contract", "x" * 5000)
    assert headers["x-matchops-reason"] == "contract"
    assert len(headers["x-matchops-error"]) == 1000


def test_a_dead_letter_made_from_a_redelivery_says_so() -> None:
    received = delivery(None, redelivered=True)
    assert republished_headers(received, 0, "contract", "x")[REDELIVERED_HEADER] is True
    assert REDELIVERED_HEADER not in republished_headers(delivery(None), 0, "contract", "x")


def test_only_the_verdict_on_this_delivery_marks_a_redelivery() -> None:
    # A replayed or retried message may carry the mark of an earlier dead letter.
    marked = {REDELIVERED_HEADER: True}
    assert REDELIVERED_HEADER not in republished_headers(delivery(marked), 0, "contract", "x")
    # A retry copy is a new message: its next delivery is a first one.
    retried = delivery(None, redelivered=True)
    assert REDELIVERED_HEADER not in republished_headers(retried, 1)


def test_the_first_routing_key_survives_retries() -> None:
    first = republished_headers(delivery(None, "matches.process"), 1)
    back_from_retry = delivery(first, routing_key="matches")
    assert republished_headers(back_from_retry, 2)["x-matchops-original-routing-key"] == (
        "matches.process"
    )


def test_a_retry_copy_of_a_message_claiming_endless_attempts_can_be_written() -> None:
    # A header pika reads as the largest 64-bit integer: one more would not encode.
    received = delivery({ATTEMPTS_HEADER: 2**63 - 1})
    headers = republished_headers(received, received.attempts + 1)
    properties = pika.BasicProperties(headers=headers)
    assert properties.encode()
    assert headers[ATTEMPTS_HEADER] == MAX_ATTEMPTS + 1
