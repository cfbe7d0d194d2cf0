"""The whole pipeline on a cluster with a real node, RabbitMQ and PostgreSQL.

The operator is installed with the Helm chart and runs as a pod from the project image; the
scraper is the image's sample producer, run as a Job from the operator's CronJob; workers are
pods the operator scales on the backlog. Everything is checked where a user would look: the
database, the dead-letter queue, `kubectl get` / `describe`, Events.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Callable

import pytest
from celery import Celery
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.outcome import DeadLetter, stored_matches, take_dead_letters
from matchops_devenv.pipeline import (
    Pipeline,
    PipelineError,
    Target,
    Watch,
    sample,
    scraped_ingestion,
    wait_for,
)
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.season import Season, expected_reason

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.node, pytest.mark.e2e]

# Six divisions of 30 teams: 5,220 fixtures, 2,610 results, 7 invalid messages. Workers take
# one message at a time (prefetch and batch 1), so the season keeps several of them busy for
# longer than pods take to start and pass their probes: the operator sizes them 100 messages a
# replica until it has measured their pace.
SEASON = Season(
    divisions=("Northeast", "Mid-Atlantic", "Southeast", "Florida", "Central", "Texas"), teams=30
)
ONE_AT_A_TIME = {"prefetch": 1, "batchSize": 1}
SCRAPE_JOB = "scrape-now"
DEAD_LETTER_QUEUE = "mlsnext-u14.dlq"
LEGACY_TASK = "celery_tasks.match_tasks.process_match_data"
# What a worker logs when SIGTERM stops it: it finished the batch in hand, acked, and exited.
GRACEFUL_STOP = ("stopping: consumer cancelled, finishing the batch in hand", "worker stopped")


def unexplained_dead_letters(
    dead: list[DeadLetter], invalid: list[bytes], republished: bool
) -> list[str]:
    """What the dead-letter queue holds that the season does not explain: a valid message, an
    invalid one missing, or a copy repeated without a redelivery.

    A worker whose broker session ends between an invalid message's copy and its ack leaves
    the message to be delivered again, and copied again (at least once, never lost): such a
    copy is marked as made from a redelivery. Two unmarked copies of one message were made
    from one delivery, or from a message published twice: which a scraper that reconnected
    (`republished`) may have done, since it publishes at least once too.
    """
    copies: dict[bytes, list[DeadLetter]] = defaultdict(list)
    for letter in dead:
        copies[letter.body].append(letter)
    problems = [f"missing: {body[:300]!r}" for body in invalid if body not in copies]
    for body, letters in copies.items():
        if body not in invalid:
            problems += [
                f"not invalid: {d.reason}: {d.error[:300]}: {body[:300]!r}" for d in letters
            ]
        first = [letter for letter in letters if not letter.redelivered]
        if len(first) > 1 and not republished:
            problems.append(f"copied {len(first)} times from first deliveries: {body[:300]!r}")
    return problems


def scraper_pods(pipeline: Pipeline) -> list[str]:
    """How each scraper pod ended (one that failed half-way publishes again from its retry)."""
    lines = []
    for pod in pipeline.get("pods", "-l", f"job-name={SCRAPE_JOB}")["items"]:
        status = pod.get("status", {})
        states = [
            {key: c.get(key) for key in ("restartCount", "state", "lastState")}
            for c in status.get("containerStatuses", [])
        ]
        lines.append(f"scraper pod {pod['metadata']['name']}: {status.get('phase')} {states}")
    return lines


def columns(table: str) -> dict[str, str]:
    """The cells of a one-row `kubectl get` table, by column name."""
    header, row = table.splitlines()
    names = re.findall(r"\S+(?: \S+)*", header)
    starts = [header.index(name) for name in names]
    ends = [*starts[1:], None]
    return {
        name: row[start:end].strip() for name, start, end in zip(names, starts, ends, strict=True)
    }


def test_a_scraped_season_is_stored_scaled_and_dead_lettered(
    e2e_target: Target,
    e2e_broker: RabbitMQ,
    e2e_vhost: Vhost,
    e2e_database: str,
    pipelines: Callable[[str], Pipeline],
) -> None:
    pipeline = pipelines("u14-season")
    pipeline.create_secrets(e2e_vhost.url, e2e_database, e2e_broker.management_url)
    manifest = scraped_ingestion(
        e2e_target.image,
        SEASON.scraper_args(),
        exchange="mlsnext",
        queue="mlsnext-u14",
        routing_keys=["mlsnext.u14"],
        max_replicas=3,
        target_backlog_per_replica=100,
        scale_down_delay_seconds=5,
        workers=ONE_AT_A_TIME,
    )
    pipeline.apply(manifest)
    pipeline.wait("Ready")
    assert pipeline.workers() == (0, 0), "an idle pipeline runs no workers"

    pipeline.start_scraper(SCRAPE_JOB)
    expected = SEASON.final_state()
    watch = Watch(pipeline, e2e_database)
    followed: dict[str, subprocess.Popen[str]] = {}
    said: dict[str, str] = {}
    try:
        # Two worker pods ready and consuming, with messages still waiting for them.
        busy = watch.until(
            lambda s: s.ready >= 2 and s.consumers >= 2 and s.backlog.get("ready", 0) > 0,
            "two worker pods consuming while messages wait",
            240,
        )
        followed = {pod: pipeline.follow_log(pod) for pod in pipeline.ready_pods("worker")}
        # A lowered maxReplicas applies at once: the operator scales down mid-work, and the
        # pods it removes get SIGTERM with messages in hand.
        manifest["spec"]["workers"]["maxReplicas"] = 1
        pipeline.apply(manifest)
        watch.until(lambda s: s.stored == len(expected), f"{len(expected)} matches stored", 240)
        # Every match has a row once its fixture is stored; its result may still be on its way.
        with contextlib.suppress(PipelineError):
            wait_for(
                lambda: stored_matches(e2e_database) == expected,
                "every match in its final state",
                120,
            )
        assert stored_matches(e2e_database) == expected
        # The scraper published the season where the operator told it to.
        published = json.loads(pipeline.finish_scraper(SCRAPE_JOB))
        assert published["published"] == SEASON.message_count()
        assert (published["exchange"], published["routing_key"]) == ("mlsnext", "mlsnext.u14")

        # Scaled up from zero on the first backlog seen (a poll may catch the scraper
        # half-way), then to several workers, each step with the numbers behind it.
        scaled = pipeline.scaled()
        up = re.fullmatch(
            r"Scaled workers 0 → [1-9]\d*: backlog [1-9]\d* \(ready \d+, unacked \d+\), .*",
            scaled[0],
        )
        assert up is not None, scaled
        steps = [re.match(r"Scaled workers (\d+) → (\d+)", message) for message in scaled]
        assert max(int(step.group(2)) for step in steps if step) > 1, scaled
        assert watch.peak_ready >= 2, f"at most {watch.peak_ready} worker pods were ready"
        assert watch.peak_consumers >= 2, f"at most {watch.peak_consumers} consumers"
        # Down to one while the backlog was not drained.
        mid_work = [
            m
            for m in scaled
            if re.match(r"Scaled workers [2-9] → 1: maxReplicas is 1; backlog [1-9]\d*", m)
        ]
        assert mid_work, f"no scale-down while messages waited: {scaled}; before: {busy}"

        drained = watch.until(lambda s: s.drained, "the backlog drained in status", 60)
        # The season's invalid messages, and any copy a redelivery repeated: checked below.
        dead_lettered = drained.backlog["deadLettered"]
        assert dead_lettered >= SEASON.invalid, drained

        # Down again after the scale-down delay, one step at a time, to no pod at all.
        watch.until(lambda s: s.scaled_to_zero, "workers scaled to zero", 90)
        down = [m for m in pipeline.scaled() if m.startswith("Scaled workers 1 → 0")]
        assert down, pipeline.scaled()
        assert "scale-down delay 5s" in down[-1]
        wait_for(lambda: not pipeline.pods("worker"), "worker pods gone", 60, pipeline.diagnose)
        # Every pod that served, those removed mid-work included, stopped the graceful way:
        # the batch in hand written and acked before it exited.
        for pod, log in followed.items():
            said[pod] = log.communicate(timeout=60)[0]
            assert all(line in said[pod] for line in GRACEFUL_STOP), f"{pod}:\n{said[pod][-3000:]}"
    finally:
        for log in followed.values():
            log.kill()
            log.wait()

    # What a person reads.
    cells = columns(pipeline.table())
    assert {k: cells[k] for k in ("NAME", "READY", "BACKLOG", "DLQ", "WORKERS")} == {
        "NAME": "u14-season",
        "READY": "True",
        "BACKLOG": "0",
        "DLQ": str(dead_lettered),
        "WORKERS": "0/0",
    }
    assert re.fullmatch(r"\d+s|\d+m\d*s?", cells["LAST SCRAPE"]), cells
    described = " ".join(pipeline.describe().split())
    for text in (
        "Type: Ready",
        "Reason: ScaledToZero",
        "Reason: TopologyDeclared",
        "Reason: ScraperScheduled",
        up.group(0),
        down[-1],
    ):
        assert text in described, text

    # The dead-letter queue holds the invalid messages, each with its reason, and nothing
    # else: a copy repeated only where a worker lost its broker session before the ack.
    dead = take_dead_letters(e2e_vhost, DEAD_LETTER_QUEUE)
    problems = unexplained_dead_letters(
        dead, SEASON.invalid_bodies(), republished=published["reconnects"] > 0
    )
    if problems:
        logs = [f"--- {pod}\n{text[-4000:]}" for pod, text in said.items()]
        pytest.fail(
            "\n".join([*problems, f"the scraper said {published}", *scraper_pods(pipeline), *logs])
        )
    assert len(dead) == dead_lettered
    assert [(d.reason, bool(d.error)) for d in dead] == [
        (expected_reason(d.body), True) for d in dead
    ]


def test_a_legacy_celery_producer_publishes_into_the_managed_queue(
    e2e_broker: RabbitMQ,
    e2e_vhost: Vhost,
    e2e_database: str,
    pipelines: Callable[[str], Pipeline],
) -> None:
    pipeline = pipelines("matches")
    legacy = sample("legacy-celery.yaml")
    # The producer is the existing Celery scraper outside the cluster.
    legacy["spec"]["scraper"]["suspend"] = True
    pipeline.create_secrets(e2e_vhost.url, e2e_database, e2e_broker.management_url)
    pipeline.apply(legacy)
    pipeline.wait("Ready")

    season = Season(divisions=("Northeast",), teams=6, invalid=0, seed=11)
    reports = season.reports()
    # Celery re-declares exchange, queue and binding before publishing: a queue with any
    # argument would fail here with 406 PRECONDITION_FAILED.
    with Celery("scraper", broker=e2e_vhost.url) as app:
        for report in reports:
            app.send_task(
                LEGACY_TASK, args=[report], queue="matches", routing_key="matches.process"
            )

    expected = season.final_state()
    watch = Watch(pipeline, e2e_database)
    watch.until(lambda s: s.stored == len(expected), f"{len(expected)} matches stored", 180)
    assert stored_matches(e2e_database) == expected
    assert any(m.startswith("Scaled workers 0 → ") for m in pipeline.scaled())
    topology = pipeline.condition("TopologyReady")
    assert topology is not None
    assert (topology["status"], topology["reason"]) == ("True", "TopologyDeclared")
    assert take_dead_letters(e2e_vhost, "matches.dlq") == []
