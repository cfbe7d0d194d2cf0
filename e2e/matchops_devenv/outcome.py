"""What a pipeline left behind: matches in PostgreSQL, messages in the dead-letter queue."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from matchops_worker.deadletter import ERROR_HEADER, REASON_HEADER, REDELIVERED_HEADER

from matchops_devenv.broker_tools import Message, Vhost
from matchops_devenv.season import Identity, MatchState, by_external_id


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message: its body as published and why the worker refused it."""

    body: bytes
    reason: str
    error: str
    # Copied from a redelivery: a worker before may have copied the message too.
    redelivered: bool = False

    @classmethod
    def of(cls, message: Message) -> DeadLetter:
        headers = message.headers
        return cls(
            message.body,
            str(headers.get(REASON_HEADER, "")),
            str(headers.get(ERROR_HEADER, "")),
            headers.get(REDELIVERED_HEADER) is True,
        )


# Outer joins: a match whose team, season or age group row is missing still shows (with None
# for the name), where the match_results view would drop it.
_STORED = """
SELECT m.external_match_id, s.name, a.name, h.name, w.name, m.match_date::text,
       m.status, m.home_score, m.away_score
FROM matches m
LEFT JOIN seasons s ON s.id = m.season_id
LEFT JOIN age_groups a ON a.id = m.age_group_id
LEFT JOIN teams h ON h.id = m.home_team_id
LEFT JOIN teams w ON w.id = m.away_team_id
"""


def stored_rows(dsn: str) -> list[tuple[Identity, MatchState]]:
    """Every row of the matches table, as its identity and state (references resolved to
    names); a match stored twice shows twice."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(_STORED).fetchall()
    stored = []
    for row in rows:
        external, season, age_group, home, away, match_date, status, home_score, away_score = row
        key: Identity = (
            ("external", external)
            if external is not None
            else ("natural", season, age_group, home, away, match_date)
        )
        match = MatchState(
            season, age_group, home, away, match_date, status, home_score, away_score
        )
        stored.append((key, match))
    return stored


def stored_matches(dsn: str) -> dict[str, MatchState]:
    """Every stored match with an external id, by that id."""
    return by_external_id(stored_rows(dsn))


def stored_count(dsn: str) -> int:
    """How many matches the database holds (0 before the workers' migration ran)."""
    with psycopg.connect(dsn) as conn:
        exists = conn.execute("SELECT to_regclass('matches') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return 0
        row = conn.execute("SELECT count(*) FROM matches").fetchone()
    return int(row[0]) if row else 0


def take_dead_letters(vhost: Vhost, queue: str) -> list[DeadLetter]:
    """Remove and return the messages of a dead-letter queue."""
    return [DeadLetter.of(message) for message in vhost.take(queue)]
