"""The store against a real PostgreSQL: migrations, outcomes, ordering, isolation of bad rows."""

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time
from typing import Any

import psycopg
import pytest
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.worker import worker_command
from matchops_worker import store
from matchops_worker.batch import Outcome
from matchops_worker.contract import MatchReport
from matchops_worker.store import (
    RowDeferred,
    RowRejected,
    SchemaOutdated,
    Store,
    StoreUnavailable,
)
from psycopg.rows import dict_row

from .locks import holding_match, insert_team, wait_for_a_blocked_write
from .reports import at, match

pytestmark = pytest.mark.integration


def rows(dsn: str, query: str = "SELECT * FROM match_results ORDER BY id") -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query).fetchall()


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        assert row is not None
        return int(row[0])


@pytest.fixture
def db(database: str) -> Store:
    return Store(database)


def test_migrate_creates_the_schema_once(empty_database: str) -> None:
    assert Store(empty_database).schema_version() == 0
    with pytest.raises(SchemaOutdated, match="run `matchops-worker migrate`"):
        Store(empty_database).check_schema()
    applied = store.migrate(empty_database)
    assert [m.version for m in applied] == [1, 2]
    assert store.migrate(empty_database) == []
    assert Store(empty_database).check_schema() == store.LATEST_VERSION


def test_concurrent_migrate_commands_apply_each_migration_once(empty_database: str) -> None:
    env = {"MATCHOPS_DATABASE_DSN": empty_database, "PATH": "/usr/bin:/bin"}
    processes = [
        subprocess.Popen(
            [*worker_command(), "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], results
    assert rows(empty_database, "SELECT version FROM matchops_schema_migrations") == [
        {"version": 1},
        {"version": 2},
    ]


def test_migrate_command_explains_an_unreachable_database(postgres: PostgreSQL) -> None:
    dsn = postgres.dsn().replace(f":{postgres.port}/", ":1/")
    result = subprocess.run(
        [*worker_command(), "migrate", "--wait", "1"],
        env={"MATCHOPS_DATABASE_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr


def test_created_updated_unchanged(db: Store, database: str) -> None:
    fixture = match(external_match_id="m1", reported_at=at(9))
    result = match(external_match_id="m1", reported_at=at(20), home_score=2, away_score=1)
    assert db.write([fixture]) == [Outcome.CREATED]
    assert db.write([fixture]) == [Outcome.UNCHANGED]
    assert db.write([result]) == [Outcome.UPDATED]
    assert db.write([result]) == [Outcome.UNCHANGED]
    (stored,) = rows(database)
    assert (stored["home_score"], stored["away_score"], stored["status"]) == (2, 1, "completed")
    assert stored["reported_at"] == datetime(2025, 10, 4, 20, tzinfo=UTC)


@pytest.mark.parametrize("external_match_id", ["m1", None], ids=["external-id", "natural-key"])
def test_every_field_of_a_report_is_stored(
    db: Store, database: str, external_match_id: str | None
) -> None:
    report = match(
        external_match_id=external_match_id,
        division="Northeast",
        kickoff="18:30",
        location="Subaru Park, Field 2",
        notes="Moved from Saturday",
        home_score=3,
        away_score=0,
        match_status="completed",
        match_type="Cup",
        reported_at=at(21),
    )
    assert db.write([report]) == [Outcome.CREATED]
    (stored,) = rows(database)
    assert {key: stored[key] for key in stored if key not in ("id", "updated_at")} == {
        "external_match_id": external_match_id,
        "season": "2025-26",
        "age_group": "U14",
        "division": "Northeast",
        "match_date": date(2025, 10, 4),
        "kickoff": time(18, 30),
        "home_team": "Philadelphia Union",
        "away_team": "FC Delco",
        "home_score": 3,
        "away_score": 0,
        "status": "completed",
        "match_type": "Cup",
        "location": "Subaru Park, Field 2",
        "notes": "Moved from Saturday",
        "reported_at": datetime(2025, 10, 4, 21, tzinfo=UTC),
    }


def test_results_update_matches_in_place(db: Store, database: str) -> None:
    """Fixtures, then their results in another order: the updates stay on their pages (HOT)."""
    fixtures = [match(external_match_id=f"m{n}") for n in range(600)]
    # Results come by match day, not in the order the fixtures were published: each batch
    # of 100 touches a few rows of every page.
    order = sorted(range(600), key=lambda n: (n % 6, n))
    results = [match(external_match_id=f"m{n}", home_score=1, away_score=0) for n in order]
    for reports in (fixtures, results):
        for start in range(0, len(reports), 100):
            db.write(reports[start : start + 100])
    # The store's session reports its statistics before it answers this (autocommit).
    db.connection().execute("SELECT pg_stat_force_next_flush()")
    (stats,) = rows(
        database,
        "SELECT n_tup_upd AS updated, n_tup_hot_upd AS hot FROM pg_stat_user_tables "
        "WHERE relname = 'matches'",
    )
    assert stats["updated"] == 600
    assert stats["hot"] >= 0.9 * 600, stats


def test_unchanged_rows_are_not_rewritten(db: Store, database: str) -> None:
    report = match(external_match_id="m1")
    db.write([report])
    before = rows(database, "SELECT xmin::text, updated_at FROM matches")
    db.write([report, report])
    assert rows(database, "SELECT xmin::text, updated_at FROM matches") == before


def test_older_report_never_overwrites_a_newer_one(db: Store, database: str) -> None:
    completed = match(external_match_id="m1", reported_at=at(20), home_score=3, away_score=3)
    late_fixture = match(external_match_id="m1", reported_at=at(9))
    assert db.write([completed]) == [Outcome.CREATED]
    assert db.write([late_fixture]) == [Outcome.STALE]
    (stored,) = rows(database)
    assert (stored["status"], stored["home_score"]) == ("completed", 3)


def test_a_newer_identical_report_moves_only_the_report_time(db: Store, database: str) -> None:
    # Scheduled, postponed, then scheduled again: the postponement arrives last (it waited in
    # a retry queue), and is older news than the identical report before it.
    assert db.write([match(external_match_id="m1", reported_at=at(1))]) == [Outcome.CREATED]
    before = rows(database, "SELECT updated_at FROM matches")
    assert db.write([match(external_match_id="m1", reported_at=at(3))]) == [Outcome.UNCHANGED]
    assert rows(database, "SELECT updated_at FROM matches") == before
    late = match(external_match_id="m1", reported_at=at(2), match_status="postponed")
    assert db.write([late]) == [Outcome.STALE]
    (stored,) = rows(database)
    assert (stored["status"], stored["reported_at"]) == ("scheduled", datetime.fromisoformat(at(3)))


def test_without_report_times_the_status_never_goes_back(db: Store, database: str) -> None:
    assert db.write([match(home_score=1, away_score=0)]) == [Outcome.CREATED]
    assert db.write([match()]) == [Outcome.STALE]
    assert db.write([match(home_score=2, away_score=0)]) == [Outcome.UPDATED]
    assert rows(database)[0]["home_score"] == 2


def test_a_later_report_time_may_move_the_status_back(db: Store, database: str) -> None:
    db.write([match(reported_at=at(10), match_status="postponed")])
    assert db.write([match(reported_at=at(11), kickoff="18:00")]) == [Outcome.UPDATED]
    assert rows(database)[0]["status"] == "scheduled"


def test_names_match_case_spacing_and_unicode_insensitively(db: Store, database: str) -> None:
    db.write([match(home_team="Atlético  Union", away_team="FC Delco")])
    outcome = db.write(
        [match(home_team="ATLE\u0301TICO union", away_team="fc delco", season=" 2025-26 ")]
    )
    assert outcome == [Outcome.UNCHANGED]
    assert count(database, "teams") == 2
    assert count(database, "seasons") == 1
    assert rows(database, "SELECT name FROM teams ORDER BY id") == [
        {"name": "Atlético  Union"},
        {"name": "FC Delco"},
    ]


def test_natural_key_and_external_id_identify_different_matches(db: Store, database: str) -> None:
    assert db.write([match(), match(external_match_id="e1")]) == [Outcome.CREATED] * 2
    assert db.write([match(match_date="2025-10-11")]) == [Outcome.CREATED]
    assert count(database, "matches") == 3


def test_absent_details_keep_the_stored_ones(db: Store, database: str) -> None:
    db.write([match(external_match_id="m1", location="Field 2", division="Northeast")])
    db.write([match(external_match_id="m1", home_score=1, away_score=0)])
    (stored,) = rows(database)
    assert (stored["location"], stored["division"], stored["status"]) == (
        "Field 2",
        "Northeast",
        "completed",
    )


def test_external_id_reports_may_correct_the_fixture(db: Store, database: str) -> None:
    db.write([match(external_match_id="m1")])
    assert db.write([match(external_match_id="m1", match_date="2025-10-05")]) == [Outcome.UPDATED]
    assert rows(database)[0]["match_date"].isoformat() == "2025-10-05"


def test_a_batch_collapses_duplicates_and_keeps_the_winner(db: Store, database: str) -> None:
    outcomes = db.write(
        [
            match(external_match_id="m1"),
            match(external_match_id="m1", home_score=1, away_score=0),
            match(external_match_id="m1"),
            match(external_match_id="m2"),
        ]
    )
    assert outcomes == [
        Outcome.SUPERSEDED,
        Outcome.CREATED,
        Outcome.SUPERSEDED,
        Outcome.CREATED,
    ]
    assert [r["status"] for r in rows(database)] == ["completed", "scheduled"]


def test_a_row_the_database_refuses_is_isolated(db: Store, database: str) -> None:
    # A rule the message contract does not know about: only the database can refuse it.
    with psycopg.connect(database) as conn:
        conn.execute("ALTER TABLE matches ADD CONSTRAINT no_poison CHECK (location <> 'poison')")
    reports = [match(external_match_id=f"m{i}") for i in range(7)]
    reports[4] = match(external_match_id="m4", location="poison")
    results = db.write(reports)
    assert isinstance(results[4], RowRejected)
    assert "no_poison" in results[4].error
    assert results[:4] + results[5:] == [Outcome.CREATED] * 6
    assert count(database, "matches") == 6


def test_a_team_deleted_by_hand_is_created_again(db: Store, database: str) -> None:
    db.write([match(external_match_id="m1")])
    with psycopg.connect(database) as conn:
        conn.execute("DELETE FROM teams WHERE name = 'FC Delco'")
    assert db.write([match(external_match_id="m2", match_date="2025-10-11")]) == [Outcome.CREATED]
    assert count(database, "teams") == 2
    assert [r["away_team"] for r in rows(database)] == ["FC Delco"]


def test_unreachable_database_is_unavailable_not_a_data_error(postgres: PostgreSQL) -> None:
    dsn = postgres.dsn().replace(f":{postgres.port}/", ":1/")
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        Store(dsn, connect_timeout=2).write([match()])


def test_missing_schema_is_unavailable_not_a_data_error(empty_database: str) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        Store(empty_database).write([match()])


def test_the_store_reconnects_after_the_server_dropped_it(db: Store, database: str) -> None:
    db.write([match(external_match_id="m1")])
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'matchops-worker' AND datname = current_database()"
        )
    with pytest.raises(StoreUnavailable):
        db.write([match(external_match_id="m2")])
    assert db.write([match(external_match_id="m2")]) == [Outcome.CREATED]


def test_a_report_deadlocked_alone_is_deferred(database: str) -> None:
    Store(database).write([match(external_match_id="m1")])
    db = Store(database)  # knows no names yet, so its first write inserts the new team
    before = deadlocks(database)
    result = match(external_match_id="m1", home_team="Reading United", home_score=2, away_score=0)
    with holding_match(database, "m1") as other, ThreadPoolExecutor(1) as pool:
        # The write inserts the team, then waits for the match row; the other session holds
        # the row and now waits for the team: each waits for the other.
        writing = pool.submit(db.write, [result])
        wait_for_a_blocked_write(database)
        insert_team(other, "Reading United")
        (deferred,) = writing.result(timeout=30)
    assert isinstance(deferred, RowDeferred)
    assert "deadlock detected" in deferred.error
    flush_statistics(db)
    assert deadlocks(database) == before + 1
    assert db.write([result]) == [Outcome.UPDATED]
    assert rows(database)[0]["home_team"] == "Reading United"


def test_a_statement_over_the_timeout_makes_the_database_unavailable(database: str) -> None:
    Store(database).write([match(external_match_id="m1")])
    db = Store(database, statement_timeout=0.5)
    result = match(external_match_id="m1", home_score=2, away_score=0)
    with holding_match(database, "m1"), pytest.raises(StoreUnavailable, match="statement timeout"):
        db.write([result])
    assert db.write([result]) == [Outcome.UPDATED]


def flush_statistics(writer: Store) -> None:
    """Make the writer's session report its statistics (deadlocks among them) now."""
    conn = writer.connection()
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()  # a session reports when it goes idle, outside a transaction


def deadlocks(dsn: str) -> int:
    """Deadlocks PostgreSQL counted in this database (as reported by the sessions so far)."""
    query = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    return int(rows(dsn, query)[0]["deadlocks"])


def test_concurrent_writers_do_not_deadlock_and_agree(database: str) -> None:
    reports = [
        match(external_match_id=f"m{i:03d}", home_team=f"Team {i % 9}", away_team=f"Club {i % 7}")
        for i in range(300)
    ]
    errors: list[BaseException] = []
    results: list[store.Result] = []
    before = deadlocks(database)

    def write(order: list[MatchReport]) -> None:
        writer = Store(database)
        try:
            for start in range(0, len(order), 50):
                results.extend(writer.write(order[start : start + 50]))
            flush_statistics(writer)
        except BaseException as exc:
            errors.append(exc)
        finally:
            writer.close()

    threads = [
        threading.Thread(target=write, args=(list(reversed(reports)),)),
        threading.Thread(target=write, args=(reports,)),
        threading.Thread(target=write, args=(reports[150:] + reports[:150],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    # A deadlock does not raise: the batch is split, and a report clashing alone is deferred.
    assert len(results) == 900
    assert [r for r in results if isinstance(r, RowDeferred)] == []
    assert deadlocks(database) == before
    assert count(database, "matches") == 300
    assert count(database, "teams") == 16
