import json
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st
from matchops_worker.contract import (
    CELERY_TASKS,
    MatchReport,
    MatchStatus,
    Reason,
    Rejection,
    celery_message,
    message_json_schema,
    name_key,
    parse_message,
)

from .reports import MATCH

SCHEMA_FILE = Path(__file__).parents[2] / "workers" / "schema" / "match-message.schema.json"


def report(body: object, **kwargs: Any) -> MatchReport:
    parsed = parse_message(json.dumps(body).encode(), **kwargs)
    assert isinstance(parsed, MatchReport), parsed
    return parsed


def rejection(body: bytes | object, **kwargs: Any) -> Rejection:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    parsed = parse_message(raw, **kwargs)
    assert isinstance(parsed, Rejection), parsed
    return parsed


def test_minimal_match_is_scheduled() -> None:
    parsed = report(MATCH)
    assert parsed.match_date == date(2025, 10, 4)
    assert parsed.match_status is MatchStatus.SCHEDULED
    assert parsed.home_score is None
    assert parsed.kickoff is None


def test_contract_naming_with_every_field() -> None:
    parsed = report(
        {
            **MATCH,
            "division": "Northeast",
            "location": "Subaru Park",
            "notes": "rescheduled",
            "external_match_id": "abc-1",
            "home_score": 2,
            "away_score": 1,
            "match_status": "completed",
        }
    )
    assert (parsed.home_score, parsed.away_score) == (2, 1)
    assert parsed.match_status is MatchStatus.COMPLETED
    assert (parsed.division, parsed.location, parsed.notes) == (
        "Northeast",
        "Subaru Park",
        "rescheduled",
    )
    assert parsed.external_match_id == "abc-1"


def test_newer_naming_means_the_same() -> None:
    newer = {k: v for k, v in MATCH.items() if k != "match_date"}
    newer.update(date="2025-10-04", score_home=3, score_away=0, status="completed", match_id=991)
    older = {
        **MATCH,
        "home_score": 3,
        "away_score": 0,
        "match_status": "completed",
        "external_match_id": "991",
    }
    assert report(newer) == report(older)


def test_both_names_with_the_same_value_are_fine() -> None:
    assert report({**MATCH, "date": "2025-10-04"}).match_date == date(2025, 10, 4)


def test_both_names_with_different_values_are_refused() -> None:
    refused = rejection({**MATCH, "date": "2025-10-05"})
    assert refused.reason is Reason.CONTRACT
    assert "'match_date' and 'date'" in refused.error


def test_datetime_match_date_keeps_its_time_as_kickoff() -> None:
    parsed = report({**MATCH, "match_date": "2025-10-04T15:30:00-04:00"})
    assert parsed.match_date == date(2025, 10, 4)
    assert parsed.kickoff == time(15, 30)


def test_explicit_kickoff() -> None:
    assert report({**MATCH, "kickoff": "09:00"}).kickoff == time(9, 0)


def test_kickoff_conflicting_with_datetime_is_refused() -> None:
    refused = rejection({**MATCH, "match_date": "2025-10-04T15:30:00", "kickoff": "09:00"})
    assert "kickoff" in refused.error


def test_scores_without_status_mean_completed() -> None:
    assert report({**MATCH, "home_score": 0, "away_score": 0}).match_status == "completed"


@pytest.mark.parametrize("name", ["match_status", "status"])
def test_a_null_status_is_derived_from_the_scores(name: str) -> None:
    assert report({**MATCH, name: None}).match_status == "scheduled"
    scored = {**MATCH, name: None, "home_score": 2, "away_score": 1}
    assert report(scored).match_status == "completed"


def test_a_midnight_datetime_keeps_its_time_as_kickoff() -> None:
    parsed = report({**MATCH, "match_date": "2025-10-04T00:00:00"})
    assert (parsed.match_date, parsed.kickoff) == (date(2025, 10, 4), time(0, 0))


def test_strings_are_trimmed() -> None:
    assert report({**MATCH, "home_team": "  Philadelphia Union "}).home_team == (
        "Philadelphia Union"
    )


def test_a_division_of_spacing_only_is_no_division() -> None:
    assert report({**MATCH, "division": "  "}).division == ""
    assert report({**MATCH, "division": "\x1f"}).division == ""


def test_numeric_external_id_becomes_text() -> None:
    assert report({**MATCH, "match_id": 12345}).external_match_id == "12345"


def test_unknown_fields_are_ignored() -> None:
    assert report({**MATCH, "scraped_by": "bot-7"}) == report(MATCH)


def test_reported_at_without_offset_is_utc() -> None:
    parsed = report({**MATCH, "reported_at": "2025-10-04T20:00:00"})
    assert parsed.reported_at == datetime(2025, 10, 4, 20, tzinfo=UTC)


def test_amqp_timestamp_is_the_report_time_when_the_body_has_none() -> None:
    assert report(MATCH, timestamp=1_760_000_000).reported_at == datetime.fromtimestamp(
        1_760_000_000, UTC
    )
    explicit = report({**MATCH, "reported_at": "2025-01-01T00:00:00Z"}, timestamp=1_760_000_000)
    assert explicit.reported_at == datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "reason", "words"),
    [
        (b"{not json", Reason.INVALID_JSON, "not JSON"),
        (b"\xff\xfe{}", Reason.INVALID_ENCODING, "not UTF-8"),
        (b"[1, 2]", Reason.CONTRACT, "JSON object"),
        (b'"a match"', Reason.CONTRACT, "JSON object"),
        ({**MATCH, "home_team": 7}, Reason.CONTRACT, "home_team"),
        ({**MATCH, "home_team": ""}, Reason.CONTRACT, "home_team"),
        ({**MATCH, "away_team": "philadelphia   UNION"}, Reason.CONTRACT, "same team"),
        ({**MATCH, "home_score": -1, "away_score": 1}, Reason.CONTRACT, "greater than"),
        ({**MATCH, "home_score": 1.5, "away_score": 1}, Reason.CONTRACT, "home_score"),
        ({**MATCH, "home_score": "2", "away_score": 1}, Reason.CONTRACT, "home_score"),
        ({**MATCH, "home_score": True, "away_score": 1}, Reason.CONTRACT, "home_score"),
        ({**MATCH, "home_score": 2}, Reason.CONTRACT, "together"),
        ({**MATCH, "match_status": "completed"}, Reason.CONTRACT, "both scores"),
        ({**MATCH, "match_status": "abandoned"}, Reason.CONTRACT, "match_status"),
        ({**MATCH, "match_date": "04/10/2025"}, Reason.CONTRACT, "match_date"),
        ({**MATCH, "match_date": 20251004}, Reason.CONTRACT, "match_date"),
        ({**MATCH, "match_date": "2025-02-30"}, Reason.CONTRACT, "match_date"),
        ({k: v for k, v in MATCH.items() if k != "season"}, Reason.CONTRACT, "season"),
        ({**MATCH, "notes": "a\u0000b"}, Reason.CONTRACT, "NUL"),
        ({**MATCH, "home_team": "x" * 201}, Reason.CONTRACT, "home_team"),
        # Spacing to a name's identity, though pydantic does not trim it.
        ({**MATCH, "home_team": "\x1f"}, Reason.CONTRACT, "home_team is nothing but spacing"),
        ({**MATCH, "away_team": " \x1c\x1d "}, Reason.CONTRACT, "away_team is nothing but"),
        ({**MATCH, "season": "\x1e"}, Reason.CONTRACT, "season is nothing but spacing"),
        ({**MATCH, "age_group": "\x1f\x1f"}, Reason.CONTRACT, "age_group is nothing but"),
    ],
)
def test_invalid_messages(body: bytes | object, reason: Reason, words: str) -> None:
    refused = rejection(body)
    assert refused.reason is reason
    assert words in refused.error


def test_lone_surrogate_is_refused() -> None:
    body = json.dumps(MATCH).replace("FC Delco", "FC \\ud800").encode()
    assert rejection(body).reason in (Reason.INVALID_JSON, Reason.CONTRACT)


def test_non_json_content_type_is_refused() -> None:
    refused = rejection(MATCH, content_type="application/x-python-serialize")
    assert refused.reason is Reason.UNSUPPORTED_CONTENT


def test_json_content_type_with_charset_is_accepted() -> None:
    report(MATCH, content_type="application/json; charset=utf-8", content_encoding="UTF-8")


def test_compressed_body_is_refused() -> None:
    refused = rejection(MATCH, headers={"compression": "application/x-gzip"})
    assert refused.reason is Reason.UNSUPPORTED_CONTENT


def test_oversized_body_is_refused() -> None:
    refused = rejection({**MATCH, "notes": "x" * 300_000})
    assert refused.reason is Reason.TOO_LARGE


def celery_body(task: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """Body and headers of a protocol-2 task message as Celery 5 serialises it (json)."""
    from kombu.serialization import dumps

    app = Celery("producer", broker="memory://")
    message = app.amqp.as_task_v2("a1b2", task, args=args, kwargs=kwargs)
    content_type, content_encoding, body = dumps(message.body, serializer="json")  # type: ignore[no-untyped-call]
    assert (content_type, content_encoding) == ("application/json", "utf-8")
    return body.encode() if isinstance(body, str) else body, message.headers


@pytest.mark.parametrize("task", CELERY_TASKS)
def test_celery_task_message_from_celery_itself(task: str) -> None:
    body, headers = celery_body(task, [MATCH], {})
    parsed = parse_message(
        body, content_type="application/json", content_encoding="utf-8", headers=headers
    )
    assert parsed == report(MATCH)


def test_celery_match_as_keyword_argument() -> None:
    body, headers = celery_body(CELERY_TASKS[1], [], {"match_data": MATCH})
    assert parse_message(body, headers=headers) == report(MATCH)


def test_celery_unknown_task_is_refused() -> None:
    body, headers = celery_body("billing.tasks.charge", [MATCH], {})
    refused = parse_message(body, headers=headers)
    assert isinstance(refused, Rejection)
    assert refused.reason is Reason.UNKNOWN_TASK
    assert "billing.tasks.charge" in refused.error


def test_celery_task_without_arguments_is_refused() -> None:
    body, headers = celery_body(CELERY_TASKS[0], [], {})
    refused = parse_message(body, headers=headers)
    assert isinstance(refused, Rejection)
    assert refused.reason is Reason.CELERY_ENVELOPE


def test_celery_task_with_an_invalid_match_is_a_contract_violation() -> None:
    body, headers = celery_body(CELERY_TASKS[0], [{**MATCH, "home_team": ""}], {})
    refused = parse_message(body, headers=headers)
    assert isinstance(refused, Rejection)
    assert refused.reason is Reason.CONTRACT


def test_celery_message_builder_matches_celery() -> None:
    ours = celery_message(MATCH, task_id="a1b2")
    body, headers = celery_body(CELERY_TASKS[0], [MATCH], {})
    assert json.loads(ours.body) == json.loads(body)
    assert {k: ours.headers[k] for k in ("task", "id", "root_id", "lang", "retries")} == {
        k: headers[k] for k in ("task", "id", "root_id", "lang", "retries")
    }
    assert parse_message(ours.body, ours.content_type, ours.content_encoding, ours.headers) == (
        report(MATCH)
    )


def test_name_key_ignores_case_spacing_and_unicode_forms() -> None:
    assert name_key("  FC   Dallas ") == name_key("fc dallas")
    assert name_key("Atle\u0301tico") == name_key("ATLÉTICO")
    assert name_key("Straße") == name_key("STRASSE")
    assert name_key("FC Dallas") != name_key("FC Dalas")


def test_published_schema_file_equals_the_models() -> None:
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == message_json_schema(), (
        "workers/schema/match-message.schema.json is out of date: "
        "run `uv run matchops schema > workers/schema/match-message.schema.json`"
    )


@pytest.mark.parametrize(
    "message",
    [
        MATCH,
        {**MATCH, "external_match_id": 12, "home_score": 1, "away_score": 0},
        {
            **{k: v for k, v in MATCH.items() if k != "match_date"},
            "date": "2025-10-04T10:00:00Z",
            "match_id": "x1",
            "score_home": 1,
            "score_away": 1,
            "status": "completed",
        },
    ],
)
def test_schema_accepts_what_the_worker_accepts(message: dict[str, Any]) -> None:
    jsonschema.validate(message, message_json_schema(), format_checker=jsonschema.FormatChecker())
    report(message)


@pytest.mark.parametrize(
    "message",
    [
        {k: v for k, v in MATCH.items() if k != "home_team"},
        {**MATCH, "home_score": -1},
        {**MATCH, "match_status": "abandoned"},
        {**MATCH, "season": ""},
        {**MATCH, "match_date": "soon"},
    ],
)
def test_schema_refuses_what_the_worker_refuses(message: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            message, message_json_schema(), format_checker=jsonschema.FormatChecker()
        )
    rejection(message)


header_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=5,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
near_matches = st.fixed_dictionaries(
    {},
    optional={
        key: json_values | st.sampled_from([value, "", "completed", "2025-10-04", 3, -1])
        for key, value in {
            **MATCH,
            "date": "2025-10-04",
            "home_score": 1,
            "away_score": 2,
            "score_home": 1,
            "match_status": "completed",
            "status": "scheduled",
            "external_match_id": "e1",
            "match_id": 5,
            "kickoff": "10:00",
            "reported_at": "2025-10-04T10:00:00",
        }.items()
    },
)


@settings(max_examples=400, deadline=None)
@given(
    body=st.binary(max_size=300)
    | near_matches.map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda d: json.dumps(d).encode())
    | st.lists(json_values, min_size=3, max_size=3).map(lambda d: json.dumps(d).encode()),
    content_type=st.none() | st.sampled_from(["application/json", "text/plain", ""]) | st.text(),
    content_encoding=st.none() | st.sampled_from(["utf-8", "binary"]) | st.text(max_size=10),
    headers=st.none()
    | st.dictionaries(st.text(max_size=10), header_values, max_size=4)
    | st.fixed_dictionaries({"task": st.sampled_from([*CELERY_TASKS, "other"]) | header_values}),
    timestamp=st.none() | st.integers(min_value=-(2**63), max_value=2**64),
)
def test_any_delivery_is_a_valid_report_or_a_reason(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    headers: dict[str, Any] | None,
    timestamp: int | None,
) -> None:
    parsed = parse_message(body, content_type, content_encoding, headers, timestamp)
    if isinstance(parsed, Rejection):
        assert isinstance(parsed.reason, Reason)
        assert parsed.error
        return
    assert isinstance(parsed, MatchReport)
    assert name_key(parsed.home_team) != name_key(parsed.away_team)
    assert (parsed.home_score is None) == (parsed.away_score is None)
    for text in (parsed.home_team, parsed.away_team, parsed.season, parsed.notes or ""):
        assert "\x00" not in text
        text.encode()
