"""Poison at 1 % of a valid stream: every bad message dead-lettered with its reason, every valid
one stored, and the drain rate compared with the same stream without poison."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ

from .harness import QUEUE, Progress, Tally, WorkerPool, drain, fill, topology
from .report import Figures
from .workload import POISON_KINDS, Workload, build

pytestmark = pytest.mark.integration

WORKERS = 2


@pytest.fixture
def clean_pipeline(
    rabbitmq: RabbitMQ, postgres: PostgreSQL, migrated_template: str
) -> Iterator[tuple[Vhost, str]]:
    """A second virtual host and database, for the run without poison."""
    name = f"clean-{uuid.uuid4().hex[:10]}"
    vhost = Vhost(name, rabbitmq.create_vhost(name))
    dsn = postgres.create_database(name.replace("-", "_"), template=migrated_template)
    yield vhost, dsn
    rabbitmq.delete_vhost(name)
    postgres.drop_database(name.replace("-", "_"))


def drain_rate(workload: Workload, vhost: Vhost, dsn: str, state: Path) -> tuple[float, Tally]:
    layout = topology()
    fill(vhost, workload.messages, layout)
    pool = WorkerPool(state, vhost.url, dsn, layout)
    try:
        with Progress(pool, interval=0.1) as progress:
            pool.start(WORKERS)
            tally = drain(workload, dsn, vhost, layout, pool, timeout=300)
    finally:
        pool.stop()
    return progress.steady_rate(len(workload.messages)), tally


@pytest.mark.parametrize(
    "valid",
    [
        pytest.param(20_000, id="20k-messages"),
        pytest.param(80_000, id="80k-messages", marks=pytest.mark.slow),
    ],
)
def test_poison_is_dead_lettered_and_the_valid_stream_stored(
    vhost: Vhost,
    database: str,
    clean_pipeline: tuple[Vhost, str],
    tmp_path: Path,
    fault_report: Callable[[Figures], None],
    valid: int,
) -> None:
    clean, poisoned = build(valid), build(valid, poison_share=0.01)
    clean_rate, _ = drain_rate(clean, *clean_pipeline, tmp_path / "clean")
    rate, tally = drain_rate(poisoned, vhost, database, tmp_path / "poisoned")
    fault_report(
        Figures(
            scenario="1 % poison in a valid stream",
            messages_in=tally.messages_in,
            stored=tally.stored,
            dead_lettered=tally.dead_lettered,
            lost=tally.lost,
            duplicated=tally.duplicated,
            recovery="n/a",
            notes=(
                f"{POISON_KINDS} kinds of poison; {WORKERS} workers drain {rate:,.0f} msg/s, "
                f"{rate / clean_rate:.0%} of the same stream without poison ({clean_rate:,.0f} "
                "msg/s)"
            ),
        )
    )
    assert tally.lost == 0, tally.problems()
    assert tally.duplicated == 0, tally.problems()
    assert tally.valid_dead_lettered == [], tally.problems()
    assert tally.wrong_reasons == {}, tally.problems()
    assert tally.stored == valid
    assert tally.dead_lettered == len(poisoned.poison)
    assert set(tally.reasons) == set(poisoned.poison.values())
    assert tally.unexplained == []
    assert vhost.depth(QUEUE) == 0
