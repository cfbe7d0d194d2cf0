"""A realistic season of match reports, for demos, benchmarks and end-to-end tests.

Each division plays a double round robin, one round a week. The stream reports every fixture
as scheduled first, then a share of them again as completed with scores (a few postponed),
the way a scraper run after run sees a season unfold. Invalid messages can be mixed in to
exercise the dead-letter path. The same seed gives the same season.
"""

# Seeded pseudo-random numbers make a repeatable season; nothing here is a secret.
# ruff: noqa: S311

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

CLUBS = (
    "Philadelphia Union",
    "New York Red Bulls",
    "New York City FC",
    "New England Revolution",
    "Boston Bolts",
    "Seacoast United",
    "Cedar Stars Academy",
    "Met Oval",
    "FC Westchester",
    "Beachside SC",
    "Players Development Academy",
    "Connecticut FC",
    "Long Island SC",
    "World Class FC",
    "Keystone FC",
    "Oakwood SC",
    "Match Fit Academy",
    "BW Gottschee",
    "Manhattan SC",
    "Albion SC Hudson Valley",
    "Pennsylvania Classics",
    "FC Delco",
    "Lancaster Inter",
    "Steel United",
)
DIVISIONS = ("Northeast", "Mid-Atlantic", "Southeast", "Florida", "Central", "Texas", "Southwest")
LOCATIONS = ("Field 1", "Field 2", "Field 3", "Stadium", "Training Ground", "Turf A", "Turf B")
KICKOFFS = ("09:00:00", "10:30:00", "12:00:00", "13:30:00", "15:00:00")


@dataclass(frozen=True)
class SeasonPlan:
    """What to generate: a season for these age groups and divisions."""

    season: str = "2025-26"
    age_groups: Sequence[str] = ("U14",)
    divisions: Sequence[str] = ("Northeast",)
    teams_per_division: int = 12
    start: date = date(2025, 9, 6)
    completed_share: float = 0.5
    postponed_share: float = 0.02
    seed: int = 2025
    newer_naming_share: float = 0.3


def season_reports(plan: SeasonPlan) -> list[dict[str, Any]]:
    """The season as a stream of match messages: all fixtures, then the results."""
    rng = random.Random(plan.seed)
    fixtures = list(_fixtures(plan, rng))
    first_report = datetime.combine(plan.start - timedelta(days=14), datetime.min.time(), UTC)
    stream = [
        _message(fixture, plan, rng, status="scheduled", reported_at=first_report)
        for fixture in fixtures
    ]
    played = rng.sample(fixtures, round(len(fixtures) * plan.completed_share))
    played.sort(key=lambda f: (f.match_date, f.external_id))
    for fixture in played:
        report_time = datetime.combine(fixture.match_date, datetime.min.time(), UTC) + timedelta(
            hours=20
        )
        status = "postponed" if rng.random() < plan.postponed_share else "completed"
        stream.append(_message(fixture, plan, rng, status=status, reported_at=report_time))
    return stream


def invalid_messages(count: int, seed: int = 7) -> list[bytes]:
    """Messages the worker must dead-letter, one of each kind in turn."""
    good = {
        "home_team": "Philadelphia Union",
        "away_team": "FC Delco",
        "match_date": "2025-10-04",
        "season": "2025-26",
        "age_group": "U14",
        "match_type": "League",
    }
    kinds: list[bytes] = [
        b"{not json",
        json.dumps({**good, "away_team": "philadelphia  union"}).encode(),
        json.dumps({**good, "home_score": -1, "away_score": 2}).encode(),
        json.dumps({**good, "match_status": "completed"}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "season"}).encode(),
        json.dumps({**good, "match_date": "next saturday"}).encode(),
        b"\xff\xfe not utf-8",
    ]
    rng = random.Random(seed)
    picked = [kinds[i % len(kinds)] for i in range(count)]
    rng.shuffle(picked)
    return picked


def mixed_stream(reports: Sequence[dict[str, Any]], bad: Sequence[bytes], seed: int) -> list[bytes]:
    """Valid reports as JSON with the invalid messages scattered among them."""
    return scatter([json.dumps(report).encode() for report in reports], bad, seed)


def scatter(messages: Sequence[bytes], bad: Sequence[bytes], seed: int) -> list[bytes]:
    """The messages, in order, with the invalid ones inserted at seeded random places."""
    mixed = list(messages)
    rng = random.Random(seed)
    for message in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), message)
    return mixed


@dataclass(frozen=True)
class _Fixture:
    external_id: str
    age_group: str
    division: str
    home: str
    away: str
    match_date: date
    kickoff: str
    location: str


def _fixtures(plan: SeasonPlan, rng: random.Random) -> Iterator[_Fixture]:
    number = 0
    for age_group in plan.age_groups:
        for division_index, division in enumerate(plan.divisions):
            teams = _teams(division_index, plan.teams_per_division)
            for round_index, pairs in enumerate(_double_round_robin(teams)):
                match_date = plan.start + timedelta(weeks=round_index)
                for home, away in pairs:
                    number += 1
                    yield _Fixture(
                        external_id=f"{plan.season}-{age_group}-{number:06d}",
                        age_group=age_group,
                        division=division,
                        home=home,
                        away=away,
                        match_date=match_date,
                        kickoff=rng.choice(KICKOFFS),
                        location=f"{home} {rng.choice(LOCATIONS)}",
                    )


def _teams(division_index: int, count: int) -> list[str]:
    """Distinct team names for a division (clubs, with a region suffix past the list)."""
    names = []
    for i in range(count):
        club = CLUBS[(division_index * count + i) % len(CLUBS)]
        cycle = (division_index * count + i) // len(CLUBS)
        names.append(club if cycle == 0 else f"{club} {DIVISIONS[cycle % len(DIVISIONS)]}")
    return names


def _double_round_robin(teams: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Rounds of (home, away) pairs: everyone meets everyone twice, home and away swapped."""
    ring = list(teams) + ([] if len(teams) % 2 == 0 else ["(bye)"])
    rounds = []
    for _ in range(len(ring) - 1):
        half = len(ring) // 2
        pairs = [(ring[i], ring[-1 - i]) for i in range(half)]
        rounds.append([(h, a) for h, a in pairs if "(bye)" not in (h, a)])
        ring = [ring[0], ring[-1], *ring[1:-1]]
    return rounds + [[(a, h) for h, a in pairs] for pairs in rounds]


def _message(
    fixture: _Fixture, plan: SeasonPlan, rng: random.Random, status: str, reported_at: datetime
) -> dict[str, Any]:
    newer = rng.random() < plan.newer_naming_share
    message: dict[str, Any] = {
        "home_team": fixture.home,
        "away_team": fixture.away,
        ("date" if newer else "match_date"): fixture.match_date.isoformat(),
        "kickoff": fixture.kickoff,
        "season": plan.season,
        "age_group": fixture.age_group,
        "division": fixture.division,
        "match_type": "League",
        "location": fixture.location,
        ("match_id" if newer else "external_match_id"): fixture.external_id,
        ("status" if newer else "match_status"): status,
        "reported_at": reported_at.isoformat(),
    }
    if status == "completed":
        home, away = _score(rng), _score(rng)
        message["score_home" if newer else "home_score"] = home
        message["score_away" if newer else "away_score"] = away
    return message


def _score(rng: random.Random) -> int:
    # Youth league scores: mostly 0-3 goals, occasionally a rout.
    return rng.choices(range(9), weights=(20, 27, 22, 14, 8, 4, 2, 2, 1))[0]
