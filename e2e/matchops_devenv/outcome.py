"""What a pipeline left behind: matches in PostgreSQL, messages in the dead-letter queue."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from matchops_devenv.broker_tools import Message, Vhost
from matchops_devenv.season import MatchState

REASON = "x-matchops-reason"
ERROR = "x-matchops-error"


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message: its body as published and why the worker refused it."""

    body: bytes
    reason: str
    error: str

    @classmethod
    def of(cls, message: Message) -> DeadLetter:
        headers = message.headers
        return cls(message.body, str(headers.get(REASON, "")), str(headers.get(ERROR, "")))


def stored_matches(dsn: str) -> dict[str, MatchState]:
    """Every stored match with an external id, as the worker's `match_results` view shows it."""
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT external_match_id, home_team, away_team, match_date, status, "
            "home_score, away_score FROM match_results WHERE external_match_id IS NOT NULL"
        ).fetchall()
    return {
        row["external_match_id"]: MatchState(
            home_team=row["home_team"],
            away_team=row["away_team"],
            match_date=row["match_date"].isoformat(),
            status=row["status"],
            home_score=row["home_score"],
            away_score=row["away_score"],
        )
        for row in rows
    }


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
