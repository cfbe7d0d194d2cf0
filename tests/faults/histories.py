"""Match histories delivered duplicated and out of order: the newest report must win.

Each match goes through a history a scraper sees over weeks: scheduled, sometimes postponed and
rescheduled to another date, played, sometimes its score corrected. Every report carries the
time it was observed (in the body, or only as the AMQP `timestamp` property, as `matchops
publish` sends it), hours apart. The reports are then delivered in a random order, each one up
to three times, as redeliveries and producer retries do.
"""

# Seeded pseudo-random histories; nothing here is a secret.

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

from matchops_devenv.season import Identity, MatchState, identity, state
from matchops_worker.contract import CELERY_TASKS, celery_message

from .workload import Outgoing, Workload

TEAMS = [f"Club {n:03d}" for n in range(60)]
FIRST_SEEN = datetime(2025, 8, 1, tzinfo=UTC)


def history(number: int, rng: random.Random, natural: bool) -> list[dict[str, Any]]:
    """One match's reports in the order they were observed, each with its report time."""
    home, away = rng.sample(TEAMS, 2)
    kickoff = date(2025, 9, 6) + timedelta(days=7 * rng.randrange(30))
    base: dict[str, Any] = {
        "home_team": home,
        "away_team": away,
        "season": "2025-26",
        "age_group": rng.choice(["U14", "U15", "U16"]),
        "match_type": "League",
        "division": rng.choice(["Northeast", "Texas"]),
    }
    if not natural:
        base["external_match_id"] = f"hist-{number:06d}"
    moment = FIRST_SEEN + timedelta(hours=rng.randrange(48))
    reports = [{**base, "match_date": kickoff.isoformat(), "match_status": "scheduled"}]
    # A postponed match comes back scheduled, on a later date when its identity allows.
    if rng.random() < 0.25:
        reports.append({**reports[-1], "match_status": "postponed"})
        later = kickoff if natural else kickoff + timedelta(days=7)
        reports.append(
            {**reports[-1], "match_date": later.isoformat(), "match_status": "scheduled"}
        )
    if rng.random() < 0.8:
        score = {"home_score": rng.randrange(6), "away_score": rng.randrange(6)}
        reports.append({**reports[-1], **score, "match_status": "completed"})
        if rng.random() < 0.3:
            corrected = {"home_score": score["home_score"] + 1, "away_score": score["away_score"]}
            reports.append({**reports[-1], **corrected})
    stamped = []
    for report in reports:
        moment += timedelta(hours=1 + rng.randrange(72))
        stamped.append({**report, "reported_at": moment.isoformat()})
    return stamped


def deliveries(
    number: int, report: dict[str, Any], copies: int, rng: random.Random
) -> list[Outgoing]:
    """A report as delivered, `copies` times: plain JSON or Celery, report time in the body or
    only in the AMQP timestamp."""
    message_id = f"report-{number:06d}"
    observed = datetime.fromisoformat(report["reported_at"])
    outgoing = []
    for copy in range(copies):
        body = dict(report)
        timestamp = None
        if rng.random() < 0.3:
            del body["reported_at"]
            timestamp = int(observed.timestamp())
        copy_id = f"{message_id}-{copy}"
        if rng.random() < 0.2:
            task = celery_message(body, task=CELERY_TASKS[1], task_id=copy_id)
            outgoing.append(
                Outgoing(
                    copy_id,
                    task.body,
                    task.content_type,
                    task.content_encoding,
                    task.headers,
                    timestamp,
                )
            )
        else:
            outgoing.append(Outgoing(copy_id, json.dumps(body).encode(), timestamp=timestamp))
    return outgoing


def build(matches: int, seed: int = 7, natural_share: float = 0.2) -> Workload:
    """`matches` histories, every report delivered one to three times, all shuffled."""
    rng = random.Random(seed)
    messages: list[Outgoing] = []
    final: dict[Identity, MatchState] = {}
    reports: dict[str, Identity] = {}
    number = 0
    for match in range(matches):
        observed = history(match, rng, natural=rng.random() < natural_share)
        key = identity(observed[0])
        while key in final:  # two natural-key histories drew the same teams and date
            observed = history(match, rng, natural=True)
            key = identity(observed[0])
        final[key] = state(observed[-1])
        for report in observed:
            for outgoing in deliveries(number, report, rng.randint(1, 3), rng):
                messages.append(outgoing)
                reports[outgoing.message_id] = key
            number += 1
    rng.shuffle(messages)
    return Workload(messages, final, {}, reports)
