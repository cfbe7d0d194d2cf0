"""The fixture season a scraper Job publishes, and what the database must hold afterwards.

The scraper runs `matchops sample-season --publish` in the project image; the same settings
here give the same messages (the season is seeded), so the expected outcome is computed from
the reports themselves: the last report of each match is its final state, and every invalid
message ends in the dead-letter queue with the reason below.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from matchops_worker.sample import SeasonPlan, invalid_messages, mixed_stream, season_reports


@dataclass(frozen=True)
class MatchState:
    """What a stored match says: who played when, its status and score."""

    home_team: str
    away_team: str
    match_date: str
    status: str
    home_score: int | None
    away_score: int | None


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
        return final_state(self.reports())


def final_state(reports: Iterable[Mapping[str, Any]]) -> dict[str, MatchState]:
    """The last report of each match by external id, read under either naming of the contract."""
    state: dict[str, MatchState] = {}
    for report in reports:
        key = str(_either(report, "external_match_id", "match_id"))
        state[key] = MatchState(
            home_team=report["home_team"],
            away_team=report["away_team"],
            match_date=str(_either(report, "match_date", "date")),
            status=str(_either(report, "match_status", "status")),
            home_score=_either(report, "home_score", "score_home", None),
            away_score=_either(report, "away_score", "score_away", None),
        )
    return state


_MISSING = object()


def _either(report: Mapping[str, Any], name: str, newer: str, default: Any = _MISSING) -> Any:
    if name in report:
        return report[name]
    if newer in report or default is _MISSING:
        return report[newer]
    return default


def expected_reason(body: bytes) -> str:
    """The dead-letter reason the worker gives one of `Season.invalid_bodies()`."""
    try:
        json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        return "invalid-encoding"
    except ValueError:
        return "invalid-json"
    return "contract"
