"""Durations written the way Kubernetes users write them: `200ms`, `10s`, `1m30s`, `1h`.

The worker reads them from the environment and the operator from MatchIngestion specs, so both
accept exactly the same strings (`DURATION_PATTERN` is also the CRD's schema pattern).
"""

from __future__ import annotations

import math
import re

# One or more <number><unit> parts, largest unit first is not required (`90s` is as good as
# `1m30s`); a bare number is refused because `5` could mean seconds or milliseconds.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_WHOLE = re.compile(DURATION_PATTERN)


class DurationError(ValueError):
    """A string that is not a duration."""


def parse_duration(text: str) -> float:
    """Seconds in a duration string such as `1m30s` (units: ms, s, m, h)."""
    value = text.strip()
    if not _WHOLE.fullmatch(value):
        hint = f"; write {value}s for seconds" if _is_number(value) else ""
        raise DurationError(
            f"invalid duration {text!r}: expected a number with a unit (ms, s, m, h), "
            f"such as 200ms, 10s, 1m30s or 1h{hint}"
        )
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(value))


def format_duration(seconds: float) -> str:
    """The canonical string for a duration: `90.0` -> `1m30s`, `0.2` -> `200ms`, `0` -> `0s`.

    Whole milliseconds are kept and anything finer is rounded, so that
    `format_duration(parse_duration(s))` names one delay one way (retry queue names use it).
    """
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise DurationError(f"cannot format duration {seconds!r}: not a finite, positive value")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s"), (millis, "ms")]
    return "".join(f"{amount}{unit}" for amount, unit in parts if amount)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
