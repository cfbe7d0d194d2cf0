"""Another database session holding locks the worker's writes need: clashes and timeouts."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from matchops_worker.contract import name_key


@contextmanager
def holding_match(dsn: str, external_match_id: str) -> Iterator[psycopg.Connection[Any]]:
    """A transaction holding the row lock of one stored match until the block ends.

    The session never detects a deadlock itself (its deadlock_timeout outlasts any test), so
    in a deadlock with the worker it is always the worker's transaction that PostgreSQL ends.
    """
    with psycopg.connect(dsn, application_name="matchops-tests") as conn:
        conn.execute("SET deadlock_timeout = '10min'")
        locked = conn.execute(
            "SELECT id FROM matches WHERE external_match_id = %s FOR UPDATE", [external_match_id]
        ).fetchall()
        assert locked, f"no stored match {external_match_id!r} to lock"
        try:
            yield conn
        finally:
            conn.rollback()


def insert_team(conn: psycopg.Connection[Any], name: str) -> None:
    """Insert a team the way the worker does: waits while another transaction inserts it."""
    conn.execute(
        "INSERT INTO teams (name_key, name) VALUES (%s, %s) ON CONFLICT (name_key) DO NOTHING",
        [name_key(name), name],
    )


def wait_for_a_blocked_write(dsn: str, timeout: float = 30.0) -> None:
    """Wait until a `matchops-worker` session of this database waits for a lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'matchops-worker' AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting and waiting[0]:
                return
            time.sleep(0.02)
    raise AssertionError(f"no worker write waited for a lock within {timeout}s")
