"""Duplicated and out-of-order deliveries: the stored state of every match is its newest report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.outcome import stored_rows

from . import histories
from .harness import (
    QUEUE,
    WorkerPool,
    drain,
    fill,
    publish,
    reference_counts,
    topology,
)
from .report import Figures
from .workload import GOOD, Outgoing

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "matches",
    [
        pytest.param(3_000, id="3k-matches"),
        pytest.param(15_000, id="15k-matches", marks=pytest.mark.slow),
    ],
)
def test_the_newest_report_wins_whatever_the_delivery_order(
    vhost: Vhost,
    database: str,
    tmp_path: Path,
    fault_report: Callable[[Figures], None],
    matches: int,
) -> None:
    workload = histories.build(matches)
    layout = topology()
    fill(vhost, workload.messages, layout)
    # Concurrent workers see reports of one match in different batches at the same time.
    pool = WorkerPool(tmp_path, vhost.url, database, layout)
    pool.start(3)
    try:
        tally = drain(workload, database, vhost, layout, pool, timeout=300)
    finally:
        pool.stop()
    fault_report(
        tally.figures(
            scenario="duplicated and out-of-order deliveries",
            recovery="n/a",
            notes=(
                f"{matches:,} match histories (postponed, rescheduled, corrected), every report "
                "delivered 1-3 times, shuffled; 3 workers"
            ),
        )
    )
    assert tally.lost == 0, tally.problems()
    assert tally.duplicated == 0, tally.problems()
    assert tally.dead_lettered == 0, tally.reasons
    assert tally.stored == len(workload.messages)
    for table, (rows, names) in reference_counts(database).items():
        assert rows == names, f"{table}: a name was created twice"
    assert vhost.depth(QUEUE) == 0


def test_an_older_report_arriving_last_loses_to_a_newer_identical_one(
    vhost: Vhost, database: str, tmp_path: Path
) -> None:
    # Scheduled, postponed, then scheduled again on the same day: the postponement is the
    # oldest news by the time it arrives (it waited in a retry queue, or was redelivered).
    fixture = {**GOOD, "match_status": "scheduled"}
    observed = [
        {**fixture, "reported_at": "2025-09-01T10:00:00+00:00"},
        {**fixture, "reported_at": "2025-09-03T10:00:00+00:00"},
        {**fixture, "match_status": "postponed", "reported_at": "2025-09-02T10:00:00+00:00"},
    ]
    layout = topology()
    pool = WorkerPool(tmp_path, vhost.url, database, layout)
    pool.start(1)
    try:
        for count, report in enumerate(observed, start=1):
            publish(vhost, [Outgoing(f"m{count}", json.dumps(report).encode())], layout)
            pool.wait_handled(count)
    finally:
        pool.stop()
    ((_, stored),) = stored_rows(database)
    assert stored.status == "scheduled"
