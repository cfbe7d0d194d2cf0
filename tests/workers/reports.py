"""One valid match report for the worker tests, and variations of it."""

from datetime import UTC, datetime
from typing import Any

from matchops_worker.contract import MatchReport

# The fields the contract requires, nothing more.
MATCH: dict[str, Any] = {
    "home_team": "Philadelphia Union",
    "away_team": "FC Delco",
    "match_date": "2025-10-04",
    "season": "2025-26",
    "age_group": "U14",
    "match_type": "League",
}


def match(**changes: Any) -> MatchReport:
    """`MATCH` with `changes`, parsed by the contract."""
    return MatchReport.model_validate({**MATCH, **changes})


def at(hour: int) -> str:
    """A report time on the match day, as ISO 8601 text."""
    return datetime(2025, 10, 4, hour, tzinfo=UTC).isoformat()
