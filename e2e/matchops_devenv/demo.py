"""`python -m matchops_devenv demo`: the worker end to end on this machine, then cleaned up.

Starts a private RabbitMQ and PostgreSQL, applies the migrations with `matchops-worker
migrate`, publishes a sample season with `matchops sample-season` (a few invalid messages
mixed in, a few results sent the legacy Celery way), runs `matchops-worker` until the queue is
drained, prints what was stored and what went to the dead-letter queue, and stops everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from matchops_devenv import statedir
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.worker import WorkerProcess, worker_command

QUEUE = "matches"
SETTINGS = {
    "MATCHOPS_QUEUE": QUEUE,
    "MATCHOPS_QUEUE_TYPE": "classic",
    "MATCHOPS_RETRY_DELAYS": "1s,5s",
}


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add the `demo` command to the environment's command line."""
    parser = commands.add_parser(
        "demo", help="run the worker on a sample season against a local RabbitMQ and PostgreSQL"
    )
    parser.add_argument("--divisions", default="Northeast,Mid-Atlantic", help="comma list")
    parser.add_argument("--teams", type=int, default=10, help="teams per division")
    parser.add_argument("--invalid", type=int, default=5, help="invalid messages to mix in")
    parser.set_defaults(run=lambda args: run(args.divisions, args.teams, args.invalid))


def run(divisions: str, teams: int, invalid: int) -> int:
    started = time.monotonic()
    say("starting RabbitMQ and PostgreSQL on free local ports")
    with RabbitMQ() as broker, PostgreSQL() as postgres:
        state = statedir.claim("demo")
        try:
            env = {
                **os.environ,
                **SETTINGS,
                "MATCHOPS_AMQP_URL": broker.url(),
                "MATCHOPS_DATABASE_DSN": postgres.create_database("matchops"),
            }
            say("matchops-worker migrate")
            command([*worker_command(), "migrate"], env)
            say(f"matchops sample-season --publish --declare --invalid {invalid}")
            published = command(
                [
                    *matchops(),
                    "sample-season",
                    "--publish",
                    "--declare",
                    "--divisions",
                    divisions,
                    "--teams",
                    str(teams),
                    "--invalid",
                    str(invalid),
                ],
                env,
            )
            legacy = state / "legacy-results.jsonl"
            legacy.write_text(
                "".join(json.dumps(m) + "\n" for m in legacy_results(divisions.split(",")[0]))
            )
            say("matchops publish --celery legacy-results.jsonl (the old scraper's format)")
            celery = command([*matchops(), "publish", "--celery", str(legacy)], env)
            total = published["published"] + celery["published"]

            say(f"running matchops-worker until the queue is drained ({total} messages)")
            vhost = Vhost("/", broker.url())
            worker = WorkerProcess(
                state, env["MATCHOPS_AMQP_URL"], env["MATCHOPS_DATABASE_DSN"], SETTINGS
            )
            launched = time.monotonic()
            worker.start()
            try:
                wait_drained(worker, vhost, total)
                drained = time.monotonic() - launched
                metrics = worker.metrics()
            finally:
                code = worker.stop()
            say(
                f"worker started and drained the queue in {drained:.1f}s, "
                f"then stopped on SIGTERM with exit code {code}"
            )
            report(env["MATCHOPS_DATABASE_DSN"], metrics, vhost)
        finally:
            statedir.release(state)
    say(f"stopped RabbitMQ and PostgreSQL; demo took {time.monotonic() - started:.0f}s")
    return 0


def matchops() -> list[str]:
    script = Path(sys.executable).with_name("matchops")
    return [str(script)] if script.exists() else [sys.executable, "-m", "matchops_worker.cli"]


def command(argv: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a command; return the JSON it printed last (if any), fail loudly otherwise."""
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    data: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return data


def legacy_results(division: str) -> list[dict[str, Any]]:
    """U15 results from the old scraper, sent as Celery tasks without match ids."""
    return [
        {
            "home_team": home,
            "away_team": away,
            "date": date,
            "season": "2025-26",
            "age_group": "U15",
            "division": division,
            "match_type": "League",
            "score_home": score_home,
            "score_away": score_away,
            "status": "completed",
            "notes": "reported by the legacy scraper",
        }
        for home, away, date, score_home, score_away in [
            ("Philadelphia Union", "Boston Bolts", "2025-09-06", 3, 1),
            ("New York Red Bulls", "Cedar Stars Academy", "2025-09-06", 2, 2),
            ("Met Oval", "FC Westchester", "2025-09-07", 0, 1),
        ]
    ]


def wait_drained(worker: WorkerProcess, vhost: Vhost, total: int) -> None:
    started = time.monotonic()
    while time.monotonic() - started < 300:
        metrics = worker.metrics()
        done = sum(
            value
            for key, value in metrics.items()
            if key.startswith("matchops_worker_messages_total") and 'outcome="retried"' not in key
        )
        if done >= total and vhost.depth(QUEUE) == 0:
            return
        time.sleep(0.1)
    raise SystemExit(f"the queue was not drained within 300s; worker log:\n{worker.log}")


def report(dsn: str, metrics: dict[str, float], vhost: Vhost) -> None:
    outcomes = {
        key.split('"')[1]: int(value)
        for key, value in metrics.items()
        if key.startswith("matchops_worker_messages_total{")
    }
    say("messages by outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        counts = cur.execute(
            "SELECT (SELECT count(*) FROM teams) AS teams, "
            "(SELECT count(*) FROM divisions) AS divisions, "
            "(SELECT count(*) FROM matches) AS matches, "
            "(SELECT count(*) FROM matches WHERE status = 'completed') AS completed, "
            "(SELECT count(*) FROM matches WHERE status = 'postponed') AS postponed"
        ).fetchone()
        assert counts is not None
        say(
            f"stored: {counts['matches']} matches ({counts['completed']} completed, "
            f"{counts['postponed']} postponed), {counts['teams']} teams, "
            f"{counts['divisions']} divisions"
        )
        rows = cur.execute(
            "SELECT match_date, division, home_team, home_score, away_score, away_team, notes "
            "FROM match_results WHERE status = 'completed' "
            "ORDER BY notes IS NULL, match_date, home_team LIMIT 6"
        ).fetchall()
    print()
    for row in rows:
        score = f"{row['home_score']}-{row['away_score']}"
        notes = f"  ({row['notes']})" if row["notes"] else ""
        print(
            f"  {row['match_date']}  {row['division']:<13} {row['home_team']:>28} {score:^5} "
            f"{row['away_team']:<28}{notes}"
        )
    dead = vhost.take("matches.dlq")
    print()
    say(f"dead-letter queue: {len(dead)} messages")
    for message in dead:
        headers = message.headers
        body = message.body[:50].decode("utf-8", errors="replace")
        print(f"  {headers['x-matchops-reason']:<17} {headers['x-matchops-error'][:70]}")
        print(f"  {'':<17} body: {body!r}")
    print()


def say(text: str) -> None:
    print(f"==> {text}", flush=True)
