"""Pure batch logic: which stored match a report is about, which report wins, and collapsing.

A batch may hold several reports of one match (a redelivery, a result right after its
fixture). Only the one that wins is written, and rows are written in identity order, so two
workers writing overlapping batches lock rows in the same order and never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from matchops_worker.contract import STATUS_RANK, MatchReport, name_key

Identity = tuple[str, ...]


class Outcome(StrEnum):
    """What storing one message did (metrics label `outcome`)."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    STALE = "stale"
    SUPERSEDED = "superseded"


def identity(report: MatchReport) -> Identity:
    """The stored match a report is about: its external id, else its natural key."""
    if report.external_match_id is not None:
        return ("external", report.external_match_id)
    return (
        "natural",
        name_key(report.season),
        name_key(report.age_group),
        name_key(report.home_team),
        name_key(report.away_team),
        report.match_date.isoformat(),
    )


def supersedes(new: MatchReport, old: MatchReport) -> bool:
    """Whether `new`, which arrived after `old`, describes a later state of the match.

    Report times decide when both reports carry different ones; otherwise a report never moves
    the status back (scheduled < postponed < cancelled < completed), and at equal status the
    later arrival wins (a corrected score).
    """
    if (
        new.reported_at is not None
        and old.reported_at is not None
        and new.reported_at != old.reported_at
    ):
        return new.reported_at > old.reported_at
    return STATUS_RANK[new.match_status] >= STATUS_RANK[old.match_status]


@dataclass
class Collapsed:
    """The winning report for one identity, and its position in the batch."""

    identity: Identity
    report: MatchReport
    position: int


def collapse(reports: Sequence[MatchReport]) -> list[Collapsed]:
    """One report per identity (the winner), in identity order; `reports` in arrival order."""
    winners: dict[Identity, Collapsed] = {}
    for position, report in enumerate(reports):
        key = identity(report)
        current = winners.get(key)
        if current is None:
            winners[key] = Collapsed(key, report, position)
        elif supersedes(report, current.report):
            current.report, current.position = report, position
    return [winners[key] for key in sorted(winners)]
