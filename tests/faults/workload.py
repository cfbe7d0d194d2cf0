"""What the fault scenarios publish, and what PostgreSQL and the dead-letter queue must hold after.

A workload is a realistic stream of match reports (seasons of fixtures, then results, from
`matchops_worker.sample`) in the envelopes real producers use (plain JSON, Celery protocol-2
tasks), some matches without an external id (identified by their natural key), with poison
messages mixed in. Every message carries a `message_id`, so each one can be followed into the
database or the dead-letter queue. The expected end state is computed from the stream itself,
not by the worker's code: a match ends in the state of its last report (the generator reports
every match in time order), and each poison message ends in the dead-letter queue with the
reason listed here.
"""

# Seeded pseudo-random numbers choose which messages are poison; nothing here is a secret.

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from matchops_devenv.season import Identity, MatchState, either, final_states, identity
from matchops_worker.contract import CELERY_TASKS, celery_message
from matchops_worker.sample import DIVISIONS, SeasonPlan, season_reports

AGE_GROUPS = ("U13", "U14", "U15", "U16", "U17", "U19")
SEASONS = ("2022-23", "2023-24", "2024-25", "2025-26", "2026-27", "2027-28")


@dataclass(frozen=True)
class Outgoing:
    """One message as a producer publishes it."""

    message_id: str
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    headers: Mapping[str, Any] | None = None
    timestamp: int | None = None

    def properties(self) -> pika.BasicProperties:
        return pika.BasicProperties(
            content_type=self.content_type,
            content_encoding=self.content_encoding,
            headers=dict(self.headers) if self.headers else None,
            message_id=self.message_id,
            timestamp=self.timestamp,
            delivery_mode=pika.DeliveryMode.Persistent,
        )


@dataclass(frozen=True)
class Workload:
    """Messages in publishing order, with the end state they must produce."""

    messages: list[Outgoing]
    final: dict[Identity, MatchState]
    # message_id -> the dead-letter reason the worker must give it
    poison: dict[str, str] = field(default_factory=dict)
    # message_id -> the match a valid message reports
    reports: dict[str, Identity] = field(default_factory=dict)

    @property
    def valid(self) -> int:
        return len(self.messages) - len(self.poison)


def season_stream(count: int, seed: int = 2025) -> list[dict[str, Any]]:
    """At least `count` reports: whole seasons of an age group's divisions, in time order."""
    reports: list[dict[str, Any]] = []
    # One plan per season and age group: external ids are numbered within a plan.
    plans = (
        SeasonPlan(
            season=season,
            age_groups=(age_group,),
            divisions=DIVISIONS,
            teams_per_division=18,
            seed=seed + number,
        )
        for number, (season, age_group) in enumerate((s, a) for s in SEASONS for a in AGE_GROUPS)
    )
    for plan in plans:
        if len(reports) >= count:
            break
        reports.extend(season_reports(plan))
    if len(reports) < count:
        raise ValueError(f"at most {len(reports)} reports can be generated, not {count}")
    return reports[:count]


def without_external_ids(
    reports: Sequence[dict[str, Any]], share: float, seed: int
) -> list[dict[str, Any]]:
    """The reports, with every report of a `share` of the matches stripped of its external id."""
    rng = random.Random(seed)
    ids = sorted({str(either(r, "external_match_id", "match_id")) for r in reports})
    natural = set(rng.sample(ids, round(len(ids) * share)))
    stripped = []
    for report in reports:
        if str(either(report, "external_match_id", "match_id")) in natural:
            report = {k: v for k, v in report.items() if k not in ("external_match_id", "match_id")}
        stripped.append(report)
    return stripped


def envelope(message_id: str, report: Mapping[str, Any], celery: bool) -> Outgoing:
    """A report as plain JSON, or as the legacy scraper's Celery task."""
    if celery:
        task = celery_message(report, task=CELERY_TASKS[0], task_id=message_id)
        return Outgoing(
            message_id,
            task.body,
            task.content_type,
            task.content_encoding,
            task.headers,
        )
    return Outgoing(message_id, json.dumps(report).encode())


# --- poison --------------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "home_team": "Philadelphia Union",
    "away_team": "FC Delco",
    "match_date": "2025-10-04",
    "season": "2025-26",
    "age_group": "U14",
    "match_type": "League",
}


class _Harmless:
    """Unpickling this runs nothing dangerous, but a pickle body must not be unpickled at all."""

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (dict, ({**GOOD},))


PoisonMaker = Callable[[str], tuple[Outgoing, str]]


def _poison_kinds() -> list[PoisonMaker]:
    """One maker per kind of bad message: (message, the dead-letter reason it must get)."""
    good = json.dumps(GOOD)
    unknown_task = celery_message(GOOD, task="billing.tasks.charge")

    def plain(body: bytes, reason: str, **props: Any) -> PoisonMaker:
        return lambda mid: (Outgoing(mid, body, **props), reason)

    return [
        plain(good[:40].encode(), "invalid-json"),
        plain(b"\x00\x01\x02 binary garbage", "invalid-json"),
        plain(good.replace("FC Delco", "Atl\u00e9tico").encode("latin-1"), "invalid-encoding"),
        plain(good.encode("utf-16"), "invalid-encoding"),
        plain(json.dumps({**GOOD, "home_score": "2", "away_score": 1}).encode(), "contract"),
        plain(json.dumps({**GOOD, "match_date": 20251004}).encode(), "contract"),
        plain(json.dumps({**GOOD, "away_team": " philadelphia  UNION "}).encode(), "contract"),
        plain(json.dumps([GOOD]).encode(), "contract"),
        plain(json.dumps({**GOOD, "home_score": -1, "away_score": 2}).encode(), "contract"),
        plain(json.dumps({**GOOD, "match_status": "completed"}).encode(), "contract"),
        plain(json.dumps({**GOOD, "home_team": "Union\u0000"}).encode(), "contract"),
        plain(json.dumps({**GOOD, "notes": "x" * 300_000}).encode(), "too-large"),
        plain(
            pickle.dumps(_Harmless()),
            "unsupported-content-type",
            content_type="application/x-python-serialize",
            content_encoding="binary",
        ),
        plain(
            unknown_task.body,
            "unknown-task",
            headers=unknown_task.headers,
        ),
        plain(
            json.dumps({"not": "a protocol-2 body"}).encode(),
            "celery-envelope",
            headers={**celery_message(GOOD).headers},
        ),
    ]


POISON_KINDS = len(_poison_kinds())


def poison_messages(count: int, seed: int) -> Iterator[tuple[Outgoing, str]]:
    """`count` bad messages, every kind in turn, in a seeded order."""
    kinds = _poison_kinds()
    order = [kinds[i % len(kinds)] for i in range(count)]
    random.Random(seed).shuffle(order)
    for number, make in enumerate(order):
        yield make(f"poison-{number:06d}")


def build(
    valid: int,
    poison_share: float = 0.0,
    natural_share: float = 0.2,
    celery_share: float = 0.1,
    seed: int = 2025,
) -> Workload:
    """A stream of `valid` reports with `poison_share` of poison scattered through it."""
    rng = random.Random(seed)
    reports = without_external_ids(season_stream(valid, seed), natural_share, seed)
    messages: list[Outgoing] = []
    matches: dict[str, Identity] = {}
    for number, report in enumerate(reports):
        message_id = f"valid-{number:06d}"
        messages.append(envelope(message_id, report, celery=rng.random() < celery_share))
        matches[message_id] = identity(report)
    poison_count = round(valid * poison_share / (1 - poison_share)) if poison_share else 0
    poison: dict[str, str] = {}
    for message, reason in poison_messages(poison_count, seed):
        messages.insert(rng.randrange(len(messages) + 1), message)
        poison[message.message_id] = reason
    return Workload(messages, final_states(reports), poison, matches)
