"""Workers SIGKILLed at random moments while draining a large backlog lose and repeat nothing."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from matchops_devenv.broker_tools import Vhost

from .harness import (
    QUEUE,
    WorkerPool,
    drain,
    fill,
    iter_thresholds,
    reference_counts,
    topology,
    wait_for_backlog,
)
from .report import Figures, seconds
from .workload import build

pytestmark = pytest.mark.integration

WORKERS = 3
# Small batches: the stream drains over many batches, so kills spread over the drain find
# their victims at work (at 200 a batch, three workers drain the stream in two seconds).
SETTINGS = {"MATCHOPS_PREFETCH": "20", "MATCHOPS_BATCH_SIZE": "20"}


@pytest.mark.parametrize(
    ("valid", "kills"),
    [
        pytest.param(20_000, 10, id="20k-messages"),
        pytest.param(80_000, 40, id="80k-messages", marks=pytest.mark.slow),
    ],
)
def test_workers_killed_at_random_lose_and_repeat_nothing(
    vhost: Vhost,
    database: str,
    tmp_path: Path,
    fault_report: Callable[[Figures], None],
    valid: int,
    kills: int,
) -> None:
    rng = random.Random(valid)
    workload = build(valid, poison_share=0.01)
    layout = topology()
    fill(vhost, workload.messages, layout)
    pool = WorkerPool(tmp_path, vhost.url, database, layout, SETTINGS)
    pool.start(WORKERS)
    started = time.monotonic()
    try:
        for backlog in iter_thresholds(len(workload.messages), kills, rng):
            wait_for_backlog(vhost, QUEUE, backlog)
            pool.kill_one(rng, vhost)
        tally = drain(workload, database, vhost, layout, pool, timeout=300)
    finally:
        logs = pool.logs()
        pool.stop()
    elapsed = time.monotonic() - started
    mid_work = sum(kill.mid_work for kill in pool.kills)

    fault_report(
        tally.figures(
            scenario=f"{WORKERS} workers SIGKILLed {kills} times while draining",
            recovery=f"replacement consuming {seconds(max(pool.replacements))} after a kill (max)",
            notes=(
                f"1 % poison; prefetch and batch 20; drained in {elapsed:.0f} s; {mid_work} of "
                f"{kills} kills hit a worker settling messages while more waited"
            ),
        )
    )
    assert len(pool.kills) == kills
    # Victims are chosen among consuming workers. A kill is mid-work when its victim held
    # messages it had not acknowledged; the last kills may find the queue drained.
    assert mid_work > kills / 2, f"kills that cut no work short: {pool.kills}"
    assert tally.lost == 0, tally.problems() + logs[-3000:]
    assert tally.duplicated == 0, tally.problems()
    assert tally.valid_dead_lettered == [], tally.problems()
    assert tally.wrong_reasons == {}, tally.problems()
    assert tally.stored == workload.valid
    assert tally.dead_lettered == len(workload.poison)
    # A worker acks an invalid message once the broker has confirmed its dead-letter copy.
    # Killed between that confirm and the ack reaching the broker, it leaves the message
    # unacked: the broker redelivers it and another worker dead-letters it again. Delivery
    # into the dead-letter queue is at least once, like everything else; a kill repeats only
    # the invalid messages in that gap.
    assert tally.dead_letters_repeated <= kills, tally.problems()
    # Each repeat is a copy made from the redelivery, and says so.
    assert tally.unmarked_repeats == 0, tally.problems()
    for table, (rows, names) in reference_counts(database).items():
        assert rows == names, f"{table}: a name was created twice"
    assert vhost.depth(QUEUE) == 0
