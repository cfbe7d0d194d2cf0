"""Property-based tests of everything a delivery meets before the database: whatever arrives,
the worker gets a valid report or a dead-letter reason, and can store the one and dead-letter
the other, without an exception.

tests/workers/test_contract.py already checks that `parse_message` returns a report or a
rejection for random deliveries. These go further: a rejection must name what is wrong (the
parser's last-resort "unreadable message" means an exception escaped its checks), messages
arrive in Celery envelopes and with header tables as pika decodes them off the wire, accepted
reports must be preparable for the store, and the dead-letter copy of any delivery must encode.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pika
import pika.data
from amqp import serialization as amqp_serialization  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st
from matchops_worker.consumer import Delivery, attempts_of, republished_headers
from matchops_worker.contract import CELERY_TASKS, MatchReport, Reason, Rejection, parse_message
from matchops_worker.store import Store

from .workload import GOOD

LAST_RESORT = "unreadable message"

texts = st.text(max_size=30) | st.sampled_from(["", " ", "\u00a0", "FC  Dallas", "x" * 201])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
dates = st.sampled_from(
    [
        "2025-10-04",
        "2025-02-29",
        "0001-01-01",
        "9999-12-31",
        "2025-10-04T10:00:00",
        "2025-10-04T10:00:00+14:00",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-12:00",
        "2025-10-04T25:00",
        "2025-10-04 10:00:00.123456Z",
        "20251004",
    ]
)
times = st.sampled_from(["10:00", "23:59:59", "24:00", "10:00:00.5", "noon"])
# Each field of the contract under both namings, with values near and far from valid ones.
near_matches = st.fixed_dictionaries(
    {},
    optional={
        "home_team": texts | json_values,
        "away_team": texts | json_values,
        "match_date": dates | json_values,
        "date": dates,
        "season": texts,
        "age_group": texts,
        "match_type": texts,
        "division": texts | json_values,
        "location": texts,
        "notes": texts,
        "external_match_id": texts | st.integers(min_value=-(2**70), max_value=2**70),
        "match_id": st.integers() | texts,
        "home_score": st.integers(min_value=-2, max_value=1000) | json_values,
        "away_score": st.integers(min_value=-2, max_value=1000),
        "score_home": st.integers(min_value=0, max_value=9),
        "score_away": st.integers(min_value=0, max_value=9),
        "match_status": st.sampled_from(["scheduled", "completed", "postponed", "cancelled", ""])
        | json_values,
        "status": st.sampled_from(["completed", "Completed"]),
        "kickoff": times | json_values,
        "reported_at": dates | json_values,
    },
).map(lambda extra: {**GOOD, **extra})


def encoded(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


celery_bodies = st.tuples(
    st.lists(near_matches | json_values, max_size=2),
    st.dictionaries(st.sampled_from(["match_data", "other"]), near_matches | json_values),
    json_values,
).map(lambda body: encoded(list(body))) | json_values.map(encoded)
# Header values of the AMQP field types producers send (py-amqp, Celery's client, encodes
# floats too, which pika cannot).
header_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-1000, max_value=1000)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda moment: moment.replace(microsecond=0)
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
header_keys = st.sampled_from(["task", "id", "x-matchops-attempts", "compression", "lang"])
header_tables = st.dictionaries(header_keys | st.text(max_size=8), header_values, max_size=5)


def received_headers(table: dict[str, Any]) -> dict[str, Any]:
    """A header table as a producer using py-amqp sends it and pika decodes it."""
    wire = amqp_serialization.dumps("F", [table])
    decoded: dict[str, Any] = pika.data.decode_table(wire, 0)[0]
    return decoded


def off_the_wire(headers: dict[str, Any] | None, **properties: Any) -> pika.BasicProperties:
    """Properties the worker publishes, encoded and decoded by pika."""
    sent = pika.BasicProperties(headers=headers, **properties)
    received = pika.BasicProperties()
    received.decode(b"".join(sent.encode()))
    return received


@settings(max_examples=500, deadline=None)
@given(
    body=near_matches.map(encoded) | celery_bodies | st.binary(max_size=200),
    task=st.none() | st.sampled_from([*CELERY_TASKS, "billing.tasks.charge"]),
    headers=header_tables,
    content_type=st.sampled_from([None, "application/json", "application/json; charset=utf-8"]),
    timestamp=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
)
def test_every_rejection_names_what_is_wrong(
    body: bytes,
    task: str | None,
    headers: dict[str, Any],
    content_type: str | None,
    timestamp: int | None,
) -> None:
    received = received_headers({**headers, **({"task": task} if task else {})})
    parsed = parse_message(body, content_type, None, received, timestamp)
    if isinstance(parsed, Rejection):
        assert isinstance(parsed.reason, Reason)
        assert not parsed.error.startswith(LAST_RESORT), parsed.error
    else:
        assert isinstance(parsed, MatchReport)


@settings(max_examples=300, deadline=None)
@given(reports=st.lists(near_matches, min_size=1, max_size=8))
def test_every_accepted_report_can_be_prepared_for_the_store(
    reports: list[dict[str, Any]],
) -> None:
    parsed = [parse_message(encoded(report)) for report in reports]
    accepted = [report for report in parsed if isinstance(report, MatchReport)]
    # Never connects: preparing a batch is pure.
    prepared = Store("postgresql://unused").prepare(accepted)
    assert len(prepared.reports) == len(accepted)
    for upsert in prepared.upserts:
        rows = json.loads(upsert.rows)
        assert len(rows) == len(upsert.group)
    for entity in prepared.entities:
        assert all(key for key, _ in json.loads(entity.rows))


@settings(max_examples=300, deadline=None)
@given(
    headers=st.none() | header_tables,
    body=st.binary(max_size=50),
    routing_key=st.text(max_size=20),
    reason=st.sampled_from([None, *Reason]),
    error=st.text(max_size=2000),
)
def test_the_copy_of_any_delivery_encodes(
    headers: dict[str, Any] | None,
    body: bytes,
    routing_key: str,
    reason: Reason | None,
    error: str,
) -> None:
    received = pika.BasicProperties(
        headers=None if headers is None else received_headers(headers),
        message_id="m-1",
        timestamp=int(datetime(2025, 10, 4, tzinfo=UTC).timestamp()),
        user_id="scraper",
    )
    delivery = Delivery(
        tag=1,
        exchange="matches",
        routing_key=routing_key,
        properties=received,
        body=body,
        parsed=parse_message(body),
        attempts=attempts_of(received.headers),
    )
    copied = republished_headers(delivery, delivery.attempts + 1, reason, error)
    # What the worker publishes to a retry or dead-letter queue must go on the wire.
    again = off_the_wire(copied)
    assert again.headers is not None
    assert again.headers["x-matchops-attempts"] == delivery.attempts + 1
    if reason is not None:
        assert again.headers["x-matchops-reason"] == reason.value


def test_headers_of_every_type_are_kept_in_the_copy() -> None:
    received = received_headers(
        {
            "price": Decimal("1.25"),
            "seen": datetime(2025, 10, 4, 10, 0),
            "retries": 3,
            "trace": b"\x00\x01",
            "route": ["a", {"b": None}],
            "weight": 1e20,
        }
    )
    properties = pika.BasicProperties(headers=received)
    delivery = Delivery(1, "matches", "matches", properties, b"", parse_message(b""), 0)
    copied = off_the_wire(republished_headers(delivery, 1, Reason.INVALID_JSON, "x")).headers
    assert copied is not None
    # pika reads the float as an integer; one beyond 64 bits travels on as text.
    assert copied.pop("weight") == "100000000000000000000"
    assert {key: copied[key] for key in received if key != "weight"} == {
        key: value for key, value in received.items() if key != "weight"
    }
