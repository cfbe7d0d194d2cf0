"""`matchops`: the producer command line (publish files of matches, generate a sample season,
replay dead letters)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pika.exceptions

from matchops_worker.config import ProducerConfig, comma_list, load_producer_config
from matchops_worker.contract import (
    CELERY_TASKS,
    MatchReport,
    message_json_schema,
    parse_message,
)
from matchops_worker.producer import Publisher, PublishError, Target, read_messages
from matchops_worker.replay import open_channel, replay
from matchops_worker.sample import SeasonPlan, invalid_messages, mixed_stream, season_reports


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matchops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    publish = commands.add_parser(
        "publish", help="publish match messages from a file (JSON lines or a JSON array)"
    )
    publish.add_argument("file", help="the file to publish; - reads standard input")
    publish.add_argument(
        "--allow-invalid",
        action="store_true",
        help="publish messages that fail validation too (to exercise the dead-letter queue)",
    )
    _broker_options(publish)
    publish.set_defaults(run=_publish)

    sample = commands.add_parser(
        "sample-season",
        help="generate a season of fixtures then results; write it, or publish it",
    )
    sample.add_argument("--out", default="-", help="file to write JSON lines to (default: stdout)")
    sample.add_argument("--publish", action="store_true", help="publish instead of writing")
    sample.add_argument("--season", default="2025-26")
    sample.add_argument("--age-groups", default="U14", help="comma list (default: U14)")
    sample.add_argument("--divisions", default="Northeast", help="comma list")
    sample.add_argument("--teams", type=int, default=12, help="teams per division (default: 12)")
    sample.add_argument(
        "--completed-share",
        type=float,
        default=0.5,
        help="share of fixtures reported again with a result (default: 0.5)",
    )
    sample.add_argument("--invalid", type=int, default=0, help="invalid messages to mix in")
    sample.add_argument("--seed", type=int, default=2025)
    _broker_options(sample)
    sample.set_defaults(run=_sample_season)

    replay = commands.add_parser(
        "replay",
        help="send dead letters back to where they were published, once their cause is fixed",
    )
    replay.add_argument(
        "--reason",
        action="append",
        default=[],
        metavar="REASON",
        help="replay only dead letters with this x-matchops-reason (repeatable; default: all)",
    )
    replay.add_argument(
        "--limit", type=int, metavar="N", help="replay at most N messages (default: all)"
    )
    replay.add_argument("--url", help="AMQP URL (default: $MATCHOPS_AMQP_URL)")
    replay.add_argument(
        "--queue", help="the pipeline's queue (default: $MATCHOPS_QUEUE, else matches)"
    )
    replay.add_argument(
        "--dead-letter-queue",
        help="the dead-letter queue (default: $MATCHOPS_DEAD_LETTER_QUEUE, else <queue>.dlq)",
    )
    replay.set_defaults(run=_replay)

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of a match message (workers/schema/ holds a copy)"
    )
    schema.set_defaults(run=_schema)

    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except (PublishError, pika.exceptions.AMQPError, OSError, ValueError) as exc:
        print(f"matchops: {_explain(exc)}", file=sys.stderr)
        return 1
    return code


def _broker_options(parser: argparse.ArgumentParser) -> None:
    # Defaults come from the MATCHOPS_* settings, read when publishing (load_producer_config).
    parser.add_argument("--url", help="AMQP URL (default: $MATCHOPS_AMQP_URL)")
    parser.add_argument(
        "--queue", help="queue, for --declare (default: $MATCHOPS_QUEUE, else matches)"
    )
    parser.add_argument(
        "--exchange", help="exchange (default: $MATCHOPS_EXCHANGE, else the queue name)"
    )
    parser.add_argument(
        "--routing-key",
        help="routing key (default: $MATCHOPS_ROUTING_KEY, else the first of "
        "$MATCHOPS_ROUTING_KEYS, else the queue name)",
    )
    parser.add_argument(
        "--celery", action="store_true", help="publish as Celery protocol-2 task messages"
    )
    parser.add_argument(
        "--task",
        default=CELERY_TASKS[0],
        choices=CELERY_TASKS,
        help="Celery task name, with --celery (default: %(default)s)",
    )
    parser.add_argument(
        "--declare",
        action="store_true",
        help="declare the pipeline's exchange and queues first (MATCHOPS_* settings)",
    )
    parser.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to keep reconnecting to a broker that went away before giving up "
        "(default: %(default)g; 0 gives up at once)",
    )


def _publish(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    messages = list(read_messages(data))
    problems = _validate(messages)
    for number, problem in problems:
        print(f"message {number}: {problem}", file=sys.stderr)
    if problems and not args.allow_invalid:
        print(
            f"matchops: {len(problems)} of {len(messages)} messages are invalid; nothing was "
            "published (--allow-invalid publishes them anyway)",
            file=sys.stderr,
        )
        return 2
    return _send(args, messages)


def _sample_season(args: argparse.Namespace) -> int:
    plan = SeasonPlan(
        season=args.season,
        age_groups=comma_list(args.age_groups),
        divisions=comma_list(args.divisions),
        teams_per_division=args.teams,
        completed_share=args.completed_share,
        seed=args.seed,
    )
    messages = mixed_stream(season_reports(plan), invalid_messages(args.invalid), args.seed)
    if args.publish:
        return _send(args, messages)
    text = b"".join(m + b"\n" for m in messages)
    if args.out == "-":
        sys.stdout.buffer.write(text)
    else:
        Path(args.out).write_bytes(text)
    return 0


def _settings(**options: str | None) -> tuple[ProducerConfig, str]:
    """The MATCHOPS_* settings, an option given on the command line taking its variable's place;
    and the broker URL, which is required."""
    config = load_producer_config({**os.environ, **{k: v for k, v in options.items() if v}})
    if not config.amqp_url:
        raise ValueError("no broker URL: pass --url or set MATCHOPS_AMQP_URL")
    return config, config.amqp_url


def _send(args: argparse.Namespace, messages: list[bytes]) -> int:
    config, amqp_url = _settings(
        MATCHOPS_AMQP_URL=args.url,
        MATCHOPS_QUEUE=args.queue,
        MATCHOPS_EXCHANGE=args.exchange,
        MATCHOPS_ROUTING_KEY=args.routing_key,
    )
    topology = config.topology
    target = Target(topology.exchange, config.routing_key, args.task if args.celery else None)
    started = time.monotonic()
    with Publisher(
        amqp_url,
        target,
        topology if args.declare else None,
        retry_for=args.retry_for,
        on_retry=_say_reconnecting,
    ) as publisher:
        count = publisher.publish_all(messages)
    elapsed = max(time.monotonic() - started, 1e-6)
    print(
        json.dumps(
            {
                "published": count,
                "exchange": target.exchange,
                "routing_key": target.routing_key,
                "format": "celery" if args.celery else "json",
                "seconds": round(elapsed, 3),
                "reconnects": publisher.reconnects,
            }
        )
    )
    return 0


def _replay(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise ValueError("--limit must not be negative")
    config, amqp_url = _settings(
        MATCHOPS_AMQP_URL=args.url,
        MATCHOPS_QUEUE=args.queue,
        MATCHOPS_DEAD_LETTER_QUEUE=args.dead_letter_queue,
    )
    started = time.monotonic()
    connection, channel = open_channel(amqp_url)
    try:
        report = replay(channel, config.topology, set(args.reason), args.limit)
    finally:
        if connection.is_open:
            connection.close()
    summary = report.summary(config.topology.dead_letter_queue)
    print(json.dumps({**summary, "seconds": round(time.monotonic() - started, 3)}))
    return 0


def _say_reconnecting(exc: BaseException, delay: float) -> None:
    print(
        f"matchops: the broker is unavailable ({exc!r}); trying again in {delay:.1f}s",
        file=sys.stderr,
    )


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(message_json_schema(), indent=2))
    return 0


def _validate(messages: Sequence[bytes]) -> list[tuple[int, str]]:
    problems = []
    for number, body in enumerate(messages, start=1):
        parsed = parse_message(body)
        if not isinstance(parsed, MatchReport):
            problems.append((number, f"{parsed.reason}: {parsed.error}"))
    return problems


def _explain(exc: BaseException) -> str:
    if isinstance(exc, pika.exceptions.AMQPConnectionError):
        return f"cannot connect to the broker: {exc!r}"
    if isinstance(exc, pika.exceptions.UnroutableError):
        return (
            "the broker returned a message as unroutable: no queue is bound to its exchange "
            "and routing key; it stays where it was"
        )
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return f"the broker refused: {exc.reply_code} {exc.reply_text}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
