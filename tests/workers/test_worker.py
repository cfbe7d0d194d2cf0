"""The real `matchops-worker` program against a real RabbitMQ and PostgreSQL."""

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest
from celery import Celery
from matchops_devenv.broker_tools import Vhost, publish_in_transactions
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.worker import WorkerProcess, worker_command
from matchops_worker.contract import CELERY_TASKS
from matchops_worker.sample import SeasonPlan, invalid_messages, scatter, season_reports
from matchops_worker.store import Store
from psycopg.rows import dict_row

from .locks import holding_match, insert_team, wait_for_a_blocked_write
from .reports import MATCH, match

pytestmark = pytest.mark.integration

FAST = {
    "MATCHOPS_RETRY_DELAYS": "1s,1s",
    "MATCHOPS_BATCH_WAIT": "50ms",
    "MATCHOPS_LOG_LEVEL": "debug",
}
# A batch that only stopping writes: it never fills, and waits a minute however quiet the queue.
HELD = {
    "MATCHOPS_BATCH_WAIT": "1m",
    "MATCHOPS_BATCH_IDLE": "1m",
    "MATCHOPS_BATCH_SIZE": "500",
    "MATCHOPS_PREFETCH": "1000",
}
OUTCOMES = ("created", "updated", "unchanged", "stale", "superseded", "dead_lettered", "retried")

StartWorker = Callable[..., WorkerProcess]


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


def outcome(worker: WorkerProcess, name: str) -> float:
    return worker.counter("matchops_worker_messages_total", outcome=name)


def handled(worker: WorkerProcess) -> float:
    """Messages settled for good (stored, skipped or dead-lettered; not the retried ones)."""
    return sum(outcome(worker, name) for name in OUTCOMES if name != "retried")


def wait_handled(worker: WorkerProcess, count: int, timeout: float = 60.0) -> None:
    try:
        wait_until(lambda: handled(worker) >= count, timeout, f"{count} messages handled")
    except AssertionError:
        print(worker.log)
        raise


def encode(messages: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(m).encode() for m in messages]


def stored(
    dsn: str, query: str = "SELECT * FROM match_results ORDER BY id"
) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query).fetchall()


def match_count(dsn: str) -> int:
    return len(stored(dsn, "SELECT id FROM matches"))


@pytest.fixture
def start_worker(vhost: Vhost, database: str, tmp_path: Path) -> Iterator[StartWorker]:
    """Start `matchops-worker` processes on this test's virtual host and database."""
    workers: list[WorkerProcess] = []

    def start(wait_ready: bool = True, **settings: str) -> WorkerProcess:
        dsn = settings.pop("database", database)
        url = settings.pop("url", vhost.url)
        worker = WorkerProcess(
            tmp_path, url, dsn, {**FAST, **settings}, name=f"worker-{len(workers)}"
        )
        workers.append(worker)
        return worker.start(wait_ready=wait_ready)

    yield start
    for worker in workers:
        worker.stop()


def test_created_updated_unchanged(start_worker: StartWorker, vhost: Vhost, database: str) -> None:
    worker = start_worker()
    season = season_reports(SeasonPlan(teams_per_division=6, postponed_share=0))
    fixtures, results = season[:30], season[30:]
    vhost.publish("matches", "matches", encode(fixtures))
    wait_handled(worker, 30)
    assert outcome(worker, "created") == 30
    assert {row["status"] for row in stored(database)} == {"scheduled"}

    vhost.publish("matches", "matches", encode(results))
    wait_handled(worker, 30 + len(results))
    assert outcome(worker, "updated") == len(results)

    vhost.publish("matches", "matches", encode(results))
    wait_handled(worker, 30 + 2 * len(results))
    assert outcome(worker, "unchanged") == len(results)
    rows = stored(database)
    assert len(rows) == 30
    assert sum(row["status"] == "completed" for row in rows) == len(results)
    assert vhost.depth("matches") == 0
    assert vhost.depth("matches.dlq") == 0


def test_both_namings_are_one_match(start_worker: StartWorker, vhost: Vhost, database: str) -> None:
    worker = start_worker()
    newer = {k: v for k, v in MATCH.items() if k != "match_date"}
    newer.update(date="2025-10-04", match_id=77, status="completed", score_home=1, score_away=0)
    vhost.publish("matches", "matches", encode([{**MATCH, "external_match_id": "77"}]))
    wait_handled(worker, 1)
    vhost.publish("matches", "matches", encode([newer]))
    wait_handled(worker, 2)
    (row,) = stored(database)
    assert (row["external_match_id"], row["status"], row["home_score"]) == ("77", "completed", 1)


def test_stale_report_is_ignored(start_worker: StartWorker, vhost: Vhost, database: str) -> None:
    worker = start_worker()
    result = {**MATCH, "home_score": 2, "away_score": 2, "reported_at": "2025-10-04T20:00:00Z"}
    late_fixture = {**MATCH, "match_status": "scheduled", "reported_at": "2025-09-20T00:00:00Z"}
    vhost.publish("matches", "matches", encode([result]))
    wait_handled(worker, 1)
    vhost.publish("matches", "matches", encode([late_fixture]))
    wait_handled(worker, 2)
    assert outcome(worker, "stale") == 1
    (row,) = stored(database)
    assert (row["status"], row["home_score"], row["away_score"]) == ("completed", 2, 2)


def test_invalid_messages_go_to_the_dead_letter_queue_with_the_reason(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    worker = start_worker()
    bad = invalid_messages(7)
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        headers={"x-trace": "scrape-42"},
        message_id="m-1",
    )
    vhost.publish("matches", "matches", [*bad, *encode([MATCH])], properties)
    wait_handled(worker, 8)
    assert outcome(worker, "created") == 1
    dead = vhost.take("matches.dlq")
    assert sorted(m.body for m in dead) == sorted(bad)
    reasons = sorted(m.headers["x-matchops-reason"] for m in dead)
    assert reasons == sorted(["invalid-json", "invalid-encoding"] + ["contract"] * 5), reasons
    for message in dead:
        assert message.headers["x-trace"] == "scrape-42"
        assert message.headers["x-matchops-attempts"] == 0
        assert message.headers["x-matchops-original-routing-key"] == "matches"
        assert message.headers["x-matchops-error"]
        assert message.properties.message_id == "m-1"
        assert message.properties.delivery_mode == 2
        assert "x-matchops-redelivered" not in message.headers
    assert worker.counter("matchops_worker_dead_letters_total", reason="contract") == 5
    assert vhost.depth("matches") == 0
    assert match_count(database) == 1


def test_a_dead_letter_made_from_a_redelivery_says_so(
    start_worker: StartWorker, vhost: Vhost
) -> None:
    start_worker().stop()  # the topology, declared
    vhost.publish("matches", "matches", [b"not json"])
    # Another consumer takes it and goes away without acknowledging it, as a worker that
    # copied it and lost its broker session before the ack would.
    with vhost.channel() as channel:
        method, _, _ = channel.basic_get("matches", auto_ack=False)
        assert method is not None
        assert not method.redelivered
    worker = start_worker()
    wait_handled(worker, 1)
    [dead] = vhost.take("matches.dlq")
    assert dead.headers["x-matchops-reason"] == "invalid-json"
    assert dead.headers["x-matchops-redelivered"] is True


def test_an_invalid_message_between_valid_ones_is_acked_with_their_batch(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    # The batch neither fills, nor runs out of time, nor is written when the queue runs dry:
    # only stopping writes it.
    worker = start_worker(**HELD)
    first, second = ({**MATCH, "external_match_id": f"m{i}"} for i in range(2))
    vhost.publish("matches", "matches", [*encode([first]), b"{not json", *encode([second])])
    # The copy is confirmed at once; its original waits to be acked with the valid messages
    # after it, which wait for their batch.
    wait_until(lambda: outcome(worker, "dead_lettered") == 1, what="copy confirmed")
    assert [m.body for m in vhost.take("matches.dlq")] == [b"{not json"]
    assert match_count(database) == 0
    assert worker.stop(timeout=20) == 0
    assert match_count(database) == 2
    # Nothing was left unacked to come back: not the valid messages, not the invalid one.
    assert vhost.depth("matches") == 0
    assert vhost.depth("matches.dlq") == 0


def test_stopping_while_the_database_is_down_acks_the_invalid_messages_it_holds(
    start_worker: StartWorker, postgres: PostgreSQL, vhost: Vhost
) -> None:
    worker = start_worker(MATCHOPS_RETRY_DELAYS="1m")
    first, second, third = ({**MATCH, "external_match_id": f"m{i}"} for i in range(3))
    postgres.stop()
    try:
        # The first batch fails: the worker holds the next ones until the database answers.
        vhost.publish("matches", "matches", encode([first]))
        wait_until(lambda: outcome(worker, "retried") == 1, what="first batch retried")
        vhost.publish("matches", "matches", [*encode([second]), b"{not json", *encode([third])])
        # The invalid message's copy is confirmed; its ack waits for the valid one after it.
        wait_until(lambda: outcome(worker, "dead_lettered") == 1, what="copy confirmed")
        assert worker.stop(timeout=20) == 0
    finally:
        postgres.start()
    # The valid messages held come back; the invalid one was acked before the worker left.
    vhost.wait_for_depth("matches", 2)
    assert sorted(m.body for m in vhost.take("matches")) == sorted(encode([second, third]))
    assert [m.body for m in vhost.take("matches.dlq")] == [b"{not json"]


def test_invalid_messages_in_a_stream_are_all_acked(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    worker = start_worker(MATCHOPS_BATCH_SIZE="10", MATCHOPS_PREFETCH="20")
    valid = encode([{**MATCH, "external_match_id": f"m{i}"} for i in range(300)])
    # The last one has no valid message after it to be acked with.
    stream = [*scatter(valid, invalid_messages(30), seed=3), b"{not json"]
    vhost.publish("matches", "matches", stream)
    wait_handled(worker, len(stream))
    assert outcome(worker, "dead_lettered") == 31
    assert match_count(database) == 300
    assert len(vhost.take("matches.dlq")) == 31
    # Acked, every one: stopped, the worker hands nothing back to the queue.
    assert worker.stop(timeout=20) == 0
    assert vhost.depth("matches") == 0


def unacked(rabbitmq: RabbitMQ, vhost: Vhost, queue: str) -> int:
    """Messages delivered and not yet acked (-1 until the broker has counted them)."""
    info = rabbitmq.queue_info(vhost.name, queue) or {}
    return int(info.get("messages_unacknowledged", -1))


def test_a_batch_stored_before_an_earlier_copy_is_confirmed_is_acked_once_it_is(
    start_worker: StartWorker, rabbitmq: RabbitMQ, vhost: Vhost, database: str
) -> None:
    # Each batch of ten closes on the valid message right after an invalid one, whose
    # dead-letter copy may still be on its way while the batch is written (a classic queue
    # confirms a persistent message once its store has synced it to disk): such a batch's ack
    # waits for that copy's confirm, then covers both. Of a hundred batches, some do.
    worker = start_worker(
        MATCHOPS_QUEUE_TYPE="classic",
        MATCHOPS_BATCH_SIZE="10",
        MATCHOPS_PREFETCH="20",
        MATCHOPS_BATCH_IDLE="1m",
    )
    stream: list[bytes] = []
    for batch in range(100):
        ids = [f"m{batch}-{i}" for i in range(9)]
        stream += encode([{**MATCH, "external_match_id": i} for i in ids[:8]])
        stream += [b"{not json", *encode([{**MATCH, "external_match_id": ids[8]}])]
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    with vhost.channel() as channel:
        publish_in_transactions(channel, "matches", "matches", ((b, properties) for b in stream))
    wait_handled(worker, len(stream))
    assert match_count(database) == 900
    assert len(vhost.take("matches.dlq")) == 100
    assert "its ack waits for a dead-letter copy's confirm" in worker.service.log_path.read_text()
    # Every message acked while the worker still runs: none waits for a confirm that came.
    wait_until(lambda: unacked(rabbitmq, vhost, "matches") == 0, what="no message unacked")
    assert vhost.depth("matches") == 0


def flaky_trigger(dsn: str, until: int | None) -> None:
    """Make the database raise a serialization failure for matches at the 'flaky' location.

    With `until`, only the first `until` attempts fail (counted by a sequence, which a
    rollback does not undo).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE flaky_attempts")
        limit = "NULL" if until is None else str(until)
        conn.execute(
            f"""
            CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE attempts integer;
            BEGIN
                IF NEW.location = 'flaky' THEN
                    attempts := nextval('flaky_attempts');
                    IF {limit} IS NULL OR attempts <= {limit} THEN
                        RAISE EXCEPTION 'simulated clash' USING ERRCODE = 'serialization_failure';
                    END IF;
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER flaky BEFORE INSERT OR UPDATE ON matches
                FOR EACH ROW EXECUTE FUNCTION flaky();
            """
        )


def test_a_message_that_keeps_failing_is_retried_then_dead_lettered_alone(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    flaky_trigger(database, until=None)
    worker = start_worker(MATCHOPS_BATCH_WAIT="500ms")
    others = [{**MATCH, "external_match_id": f"ok-{i}"} for i in range(20)]
    flaky = {**MATCH, "external_match_id": "flaky", "location": "flaky"}
    vhost.publish("matches", "matches", encode([*others[:10], flaky, *others[10:]]))
    wait_handled(worker, 21, timeout=60)
    assert outcome(worker, "created") == 20
    assert outcome(worker, "retried") == 2
    (dead,) = vhost.take("matches.dlq")
    assert json.loads(dead.body) == flaky
    assert dead.headers["x-matchops-reason"] == "retries-exhausted"
    assert dead.headers["x-matchops-attempts"] == 2
    assert "simulated clash" in dead.headers["x-matchops-error"]
    assert worker.counter("matchops_worker_retries_total", queue="matches.retry.1s") == 2


def test_a_transient_failure_is_retried_until_it_succeeds(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    flaky_trigger(database, until=1)
    worker = start_worker()
    vhost.publish("matches", "matches", encode([{**MATCH, "location": "flaky"}]))
    wait_handled(worker, 1, timeout=30)
    assert outcome(worker, "retried") == 1
    assert outcome(worker, "created") == 1
    assert vhost.depth("matches.dlq") == 0
    assert stored(database)[0]["location"] == "flaky"


def test_a_deadlocked_report_is_retried_and_stored(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    Store(database).write([match(external_match_id="m1")])
    worker = start_worker()
    result = {**MATCH, "external_match_id": "m1", "home_team": "Reading United"}
    result.update(home_score=2, away_score=0)
    with holding_match(database, "m1") as other:
        vhost.publish("matches", "matches", encode([result]))
        # The worker inserts the new team, then waits for the match row; the other session
        # holds the row and now waits for the team. PostgreSQL ends the worker's transaction.
        wait_for_a_blocked_write(database)
        insert_team(other, "Reading United")
        wait_until(lambda: outcome(worker, "retried") == 1, what="the report sent to retry")
    wait_handled(worker, 1)
    assert outcome(worker, "updated") == 1
    assert worker.counter("matchops_worker_retries_total", queue="matches.retry.1s") == 1
    assert worker.counter("matchops_worker_database_errors_total") == 0
    assert "deadlock detected" in worker.log
    (row,) = stored(database)
    assert (row["home_team"], row["home_score"], row["status"]) == (
        "Reading United",
        2,
        "completed",
    )
    assert vhost.depth("matches") == 0
    assert vhost.depth("matches.dlq") == 0


def test_a_statement_timeout_holds_the_worker_until_the_database_answers(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    Store(database).write([match(external_match_id="m1")])
    worker = start_worker(MATCHOPS_STATEMENT_TIMEOUT="1s", MATCHOPS_RETRY_DELAYS="2s")
    result = {**MATCH, "external_match_id": "m1", "home_score": 2, "away_score": 0}
    with holding_match(database, "m1"):
        vhost.publish("matches", "matches", encode([result]))
        wait_until(
            lambda: worker.counter("matchops_worker_database_errors_total") == 1,
            what="the write cancelled by the statement timeout",
        )
    # The batch went through the retry delay; the worker held further batches until its probe
    # found the database answering again.
    wait_handled(worker, 1)
    assert outcome(worker, "retried") == 1
    assert outcome(worker, "updated") == 1
    assert worker.counter("matchops_worker_database_errors_total") == 1
    assert worker.counter("matchops_worker_retries_total", queue="matches.retry.2s") == 1
    log = worker.log
    assert "canceling statement due to statement timeout" in log
    assert log.index("database unavailable, holding further batches") < log.index(
        '"database available"'
    )
    wait_until(worker.ready, what="ready again")
    assert worker.counter("matchops_worker_database_available") == 1
    assert stored(database)[0]["home_score"] == 2
    assert vhost.depth("matches") == 0
    assert vhost.depth("matches.dlq") == 0


def test_a_row_the_database_refuses_is_dead_lettered_alone(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("ALTER TABLE matches ADD CONSTRAINT no_poison CHECK (location <> 'poison')")
    worker = start_worker(MATCHOPS_BATCH_WAIT="500ms")
    messages = [{**MATCH, "external_match_id": f"m{i}"} for i in range(9)]
    messages[3]["location"] = "poison"
    vhost.publish("matches", "matches", encode(messages))
    wait_handled(worker, 9)
    assert outcome(worker, "created") == 8
    (dead,) = vhost.take("matches.dlq")
    assert dead.headers["x-matchops-reason"] == "store-rejected"
    assert "no_poison" in dead.headers["x-matchops-error"]


def slow_writes(dsn: str, seconds: float) -> None:
    """Make every statement writing matches take `seconds` longer."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow AFTER INSERT OR UPDATE ON matches "
            "FOR EACH STATEMENT EXECUTE FUNCTION slow()"
        )


def test_redelivery_after_a_crash_is_harmless(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    season = season_reports(SeasonPlan(teams_per_division=12, postponed_share=0))
    slow_writes(database, seconds=0.2)
    first = start_worker(MATCHOPS_BATCH_SIZE="20", MATCHOPS_PREFETCH="40")
    vhost.publish("matches", "matches", encode(season))
    wait_until(lambda: handled(first) >= 40, what="some messages stored")
    first.kill()
    second = start_worker()

    def settled() -> bool:
        rows = stored(database)
        return len(rows) == 132 and sum(r["status"] == "completed" for r in rows) == 66

    wait_until(settled, timeout=60, what="every match in its final state")
    wait_until(lambda: vhost.depth("matches") == 0, timeout=60, what="queue drained")
    assert handled(second) > 0
    rows = stored(database)
    assert len(rows) == 132
    assert len({row["external_match_id"] for row in rows}) == 132
    completed = {m.get("external_match_id") or m.get("match_id") for m in season[132:]}
    assert {row["external_match_id"] for row in rows if row["status"] == "completed"} == (completed)
    assert vhost.depth("matches.dlq") == 0


def test_sigterm_commits_the_batch_in_hand_and_exits_zero(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    worker = start_worker(**HELD)
    messages = [{**MATCH, "external_match_id": f"m{i}"} for i in range(150)]
    vhost.publish("matches", "matches", encode(messages))
    # All 150 delivered and held in an unfinished batch (not full, wait not over).
    wait_until(lambda: vhost.depth("matches") == 0, what="messages delivered")
    time.sleep(0.5)
    assert match_count(database) == 0
    started = time.monotonic()
    assert worker.stop(timeout=20) == 0
    assert time.monotonic() - started < 10
    assert match_count(database) == 150
    assert vhost.depth("matches") == 0
    assert '"stopping: consumer cancelled' in worker.log


def test_a_batch_is_written_once_the_queue_runs_dry(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    # Neither full nor out of time: the pause in deliveries, with room in the prefetch window,
    # tells the worker that nothing more is coming for now.
    worker = start_worker(
        MATCHOPS_BATCH_WAIT="1m", MATCHOPS_BATCH_SIZE="500", MATCHOPS_PREFETCH="1000"
    )
    messages = [{**MATCH, "external_match_id": f"m{i}"} for i in range(150)]
    vhost.publish("matches", "matches", encode(messages))
    wait_until(lambda: match_count(database) == 150, timeout=20, what="150 matches stored")
    wait_until(lambda: vhost.depth("matches") == 0, what="every message acked")
    assert handled(worker) == 150


def test_sigterm_during_a_slow_write_waits_for_the_commit(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    slow_writes(database, seconds=1.0)
    worker = start_worker(MATCHOPS_BATCH_SIZE="100", MATCHOPS_PREFETCH="200")
    messages = [{**MATCH, "external_match_id": f"m{i}"} for i in range(400)]
    vhost.publish("matches", "matches", encode(messages))
    wait_until(lambda: worker.counter("matchops_worker_batch_size_count") >= 1, what="a batch")
    process = worker.service.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    # Whatever the worker took was committed; the rest is still in the queue.
    assert match_count(database) + vhost.depth("matches") == 400
    assert match_count(database) >= 100


def test_heartbeats_continue_while_a_slow_batch_is_written(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    # With 2 s heartbeats the broker drops a silent connection after about 4 s; each write
    # below takes 6 s.
    slow_writes(database, seconds=6.0)
    worker = start_worker(url=f"{vhost.url}?heartbeat=2")
    vhost.publish("matches", "matches", encode([{**MATCH, "external_match_id": "m1"}]))
    wait_handled(worker, 1, timeout=60)
    vhost.publish("matches", "matches", encode([{**MATCH, "external_match_id": "m2"}]))
    wait_handled(worker, 2, timeout=60)
    assert worker.counter("matchops_worker_broker_connections_total") == 1
    assert match_count(database) == 2
    assert "reconnecting" not in worker.log


@pytest.mark.parametrize("task", CELERY_TASKS)
def test_celery_producers_are_accepted(
    start_worker: StartWorker, vhost: Vhost, database: str, task: str
) -> None:
    worker = start_worker(MATCHOPS_QUEUE_TYPE="classic")
    app = Celery("scraper", broker=vhost.url)
    app.send_task(task, args=[{**MATCH, "home_score": 4, "away_score": 0}], queue="matches")
    app.send_task(
        task, kwargs={"match_data": {**MATCH, "match_date": "2025-10-11"}}, queue="matches"
    )
    app.close()
    wait_handled(worker, 2)
    assert outcome(worker, "created") == 2
    assert [row["status"] for row in stored(database)] == ["completed", "scheduled"]


def test_unknown_celery_task_is_dead_lettered(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    worker = start_worker(MATCHOPS_QUEUE_TYPE="classic")
    app = Celery("scraper", broker=vhost.url)
    app.send_task("other.tasks.process", args=[MATCH], queue="matches")
    app.close()
    wait_handled(worker, 1)
    (dead,) = vhost.take("matches.dlq")
    assert dead.headers["x-matchops-reason"] == "unknown-task"
    assert dead.headers["task"] == "other.tasks.process"


def test_the_worker_reconnects_when_the_broker_drops_it(
    start_worker: StartWorker, rabbitmq: RabbitMQ, vhost: Vhost, database: str
) -> None:
    worker = start_worker(MATCHOPS_BATCH_SIZE="10", MATCHOPS_PREFETCH="20")
    messages = [{**MATCH, "external_match_id": f"m{i}"} for i in range(300)]
    vhost.publish("matches", "matches", encode(messages[:150]))
    wait_until(lambda: handled(worker) >= 20, what="some messages stored")
    # The management API lists a connection once its statistics have been collected.
    wait_until(lambda: rabbitmq.close_connections(vhost.name) >= 1, what="connection closed")
    vhost.publish("matches", "matches", encode(messages[150:]))
    wait_until(lambda: match_count(database) == 300, timeout=60, what="all stored")
    wait_until(lambda: worker.ready(), what="ready again")
    assert worker.counter("matchops_worker_broker_connections_total") >= 2
    assert vhost.depth("matches") == 0
    assert vhost.depth("matches.dlq") == 0


def test_a_deleted_queue_is_declared_again(
    start_worker: StartWorker, vhost: Vhost, database: str
) -> None:
    worker = start_worker()
    vhost.publish("matches", "matches", encode([MATCH]))
    wait_handled(worker, 1)
    with vhost.channel() as channel:
        channel.queue_delete("matches")
    wait_until(lambda: "the broker cancelled the consumer" in worker.log, what="cancel noticed")
    wait_until(lambda: worker.counter("matchops_worker_broker_connections_total") >= 2)
    wait_until(worker.ready, what="consuming again")
    vhost.publish("matches", "matches", encode([{**MATCH, "match_date": "2025-10-11"}]))
    wait_until(lambda: match_count(database) == 2, what="stored after the queue came back")


def test_database_down_is_waited_out_and_nothing_is_lost(
    start_worker: StartWorker, postgres: PostgreSQL, vhost: Vhost, database: str
) -> None:
    worker = start_worker(MATCHOPS_RETRY_DELAYS="1s,2s,4s,8s,16s")
    messages = [{**MATCH, "external_match_id": f"m{i}"} for i in range(200)]
    vhost.publish("matches", "matches", encode(messages[:50]))
    wait_handled(worker, 50)
    postgres.stop()
    try:
        vhost.publish("matches", "matches", encode(messages[50:]))
        wait_until(lambda: not worker.ready(), what="not ready while the database is down")
        assert worker.counter("matchops_worker_database_available") == 0
        time.sleep(5)
        assert worker.alive()
    finally:
        postgres.start()
    wait_until(lambda: match_count(database) == 200, timeout=90, what="all stored")
    wait_until(lambda: worker.ready(), what="ready again")
    assert vhost.depth("matches.dlq") == 0
    assert outcome(worker, "dead_lettered") == 0


def test_broker_restart_mid_stream(postgres: PostgreSQL, database: str, tmp_path: Path) -> None:
    with RabbitMQ() as broker:
        vhost = Vhost("/", broker.url())
        worker = WorkerProcess(tmp_path, vhost.url, database, FAST).start()
        try:
            messages = [{**MATCH, "external_match_id": f"m{i}"} for i in range(400)]
            vhost.publish("matches", "matches", encode(messages[:200]))
            broker.stop()
            wait_until(lambda: not worker.ready(), what="not ready without a broker")
            broker.start()
            vhost.publish("matches", "matches", encode(messages[200:]))
            wait_until(lambda: match_count(database) == 400, timeout=120, what="all stored")
            assert worker.ready()
            assert worker.counter("matchops_worker_broker_connections_total") >= 2
        finally:
            code = worker.stop()
        assert code == 0
        assert vhost.depth("matches") == 0


def test_without_migrations_the_worker_waits_and_says_why(
    start_worker: StartWorker, empty_database: str, vhost: Vhost
) -> None:
    from matchops_worker.store import migrate

    worker = start_worker(wait_ready=False, database=empty_database)
    wait_until(lambda: "run `matchops-worker migrate`" in worker.log, what="an explanation")
    assert worker.alive()
    assert not worker.ready()
    migrate(empty_database)
    worker.wait_ready(timeout=60)
    vhost.publish("matches", "matches", encode([MATCH]))
    wait_handled(worker, 1)


def test_health_and_metrics_endpoints(start_worker: StartWorker) -> None:
    worker = start_worker()
    assert worker.alive()
    assert worker.ready()
    metrics = worker.metrics()
    assert metrics["matchops_worker_broker_connected"] == 1
    assert metrics["matchops_worker_database_available"] == 1


def run_without_settings(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """`matchops-worker` with only `settings` in its environment, to its exit."""
    return subprocess.run(
        [*worker_command(), *args],
        env={**settings, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_invalid_configuration_exits_with_the_problems() -> None:
    result = run_without_settings(MATCHOPS_QUEUE_TYPE="stream")
    assert result.returncode == 2
    assert "MATCHOPS_AMQP_URL is required" in result.stderr
    assert "MATCHOPS_QUEUE_TYPE='stream'" in result.stderr


@pytest.mark.parametrize("command", ["run", "migrate"])
def test_an_odd_log_level_is_one_configuration_error(command: str) -> None:
    # `root` names an attribute of Python's logging module that is not a level.
    result = run_without_settings(command, MATCHOPS_LOG_LEVEL="root")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert "MATCHOPS_DATABASE_DSN is required" in entry["message"]
    assert "MATCHOPS_LOG_LEVEL='root' is not one of debug, info, warning, error" in entry["message"]
