import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from matchops_worker.durations import (
    DURATION_PATTERN,
    DurationError,
    format_duration,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("200ms", 0.2),
        ("10s", 10.0),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("90s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        (" 5m ", 300.0),
        ("1h2m3s4ms", 3723.004),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "-1s", "1d", "s", "1 m", "1m-5s", "ten seconds"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(DurationError, match="invalid duration"):
        parse_duration(text)


def test_bare_number_error_suggests_a_unit() -> None:
    with pytest.raises(DurationError, match="write 5s for seconds"):
        parse_duration("5")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90.0, "1m30s"), (0.2, "200ms"), (0.0, "0s"), (3600.0, "1h"), (10.0, "10s"), (60.0, "1m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_format_duration_refuses(seconds: float) -> None:
    with pytest.raises(DurationError):
        format_duration(seconds)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_round_trips_milliseconds(millis: int) -> None:
    text = format_duration(millis / 1000)
    assert re.fullmatch(DURATION_PATTERN, text)
    assert round(parse_duration(text) * 1000) == millis


def test_one_delay_has_one_name() -> None:
    assert format_duration(parse_duration("60s")) == format_duration(parse_duration("1m"))
