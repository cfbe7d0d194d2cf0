"""The fixture season a scraper Job publishes, and what the database must hold afterwards.

The scraper runs `matchops sample-season --publish` in the project image; the same settings
here give the same messages (the season is seeded), so the expected outcome is computed from
the reports themselves: the last report of each match is its final state, and every invalid
message ends in the dead-letter queue with the reason below. The fault suite computes its
expected outcomes with the same functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from matchops_worker.sample import SeasonPlan, invalid_messages, mixed_stream, season_reports

# A match's identity: ("external", id), or ("natural", season, age group, home, away, date)
# for a match reported without an external id.
Identity = tuple[str, ...]


@dataclass(frozen=True)
class MatchState:
    """What a stored match says: which season and age group, who played when, status, score."""

    season: str
    age_group: str
    home_team: str
    away_team: str
    match_date: str
    status: str
    home_score: int | None
    away_score: int | None


def either(report: Mapping[str, Any], name: str, newer: str) -> Any:
    """A field of a report under the contract's name or the scraper's newer one (None if
    neither is there)."""
    return report[name] if name in report else report.get(newer)


def identity(report: Mapping[str, Any]) -> Identity:
    """The match a report is about, as the worker identifies it."""
    external = either(report, "external_match_id", "match_id")
    if external is not None:
        return ("external", str(external))
    return (
        "natural",
        report["season"],
        report["age_group"],
        report["home_team"],
        report["away_team"],
        str(either(report, "match_date", "date")),
    )


def state(report: Mapping[str, Any]) -> MatchState:
    """The state a report gives its match."""
    return MatchState(
        season=report["season"],
        age_group=report["age_group"],
        home_team=report["home_team"],
        away_team=report["away_team"],
        match_date=str(either(report, "match_date", "date")),
        status=str(either(report, "match_status", "status")),
        home_score=either(report, "home_score", "score_home"),
        away_score=either(report, "away_score", "score_away"),
    )


def final_states(reports: Iterable[Mapping[str, Any]]) -> dict[Identity, MatchState]:
    """Each match's last report, for reports in the order they were observed."""
    return {identity(report): state(report) for report in reports}


def by_external_id(matches: Iterable[tuple[Identity, MatchState]]) -> dict[str, MatchState]:
    """The matches that have an external id, by that id."""
    return {key[1]: match for key, match in matches if key[0] == "external"}


@dataclass(frozen=True)
class Season:
    """A seeded season of U14 league matches, with invalid messages mixed in."""

    divisions: tuple[str, ...] = ("Northeast", "Mid-Atlantic")
    teams: int = 12
    invalid: int = 7
    seed: int = 2025

    def plan(self) -> SeasonPlan:
        return SeasonPlan(divisions=self.divisions, teams_per_division=self.teams, seed=self.seed)

    def scraper_args(self) -> list[str]:
        """The scraper container's command: publish this season to the pipeline's exchange."""
        return [
            "matchops",
            "sample-season",
            "--publish",
            "--divisions",
            ",".join(self.divisions),
            "--teams",
            str(self.teams),
            "--invalid",
            str(self.invalid),
            "--seed",
            str(self.seed),
        ]

    def reports(self) -> list[dict[str, Any]]:
        """The valid reports, in the order the scraper publishes them."""
        return season_reports(self.plan())

    def invalid_bodies(self) -> list[bytes]:
        """The invalid messages among what the scraper publishes."""
        return invalid_messages(self.invalid)

    def message_count(self) -> int:
        return len(mixed_stream(self.reports(), self.invalid_bodies(), self.seed))

    def final_state(self) -> dict[str, MatchState]:
        """Each match's last report, by external id: what the database must hold."""
        return by_external_id(final_states(self.reports()).items())


def expected_reason(body: bytes) -> str:
    """The dead-letter reason the worker gives one of `Season.invalid_bodies()`."""
    try:
        json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return "invalid-encoding"
    except ValueError:
        return "invalid-json"
    return "contract"
