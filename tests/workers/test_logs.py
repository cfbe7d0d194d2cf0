import json
import logging
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.ports import free_port
from matchops_worker.logs import JsonFormatter, configure


def record(**extra: object) -> logging.LogRecord:
    entry = logging.LogRecord(
        "matchops_worker", logging.WARNING, "x.py", 1, "batch %s", ("a",), None
    )
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def test_one_json_object_per_record_with_extra_fields() -> None:
    line = JsonFormatter().format(record(queue="matches", attempts=2))
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "matchops_worker"
    assert entry["message"] == "batch a"
    assert entry["queue"] == "matches"
    assert entry["attempts"] == 2
    assert entry["time"].endswith("+00:00")
    assert "\n" not in line


def test_exceptions_are_included() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        entry = record()
        entry.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(entry))["error"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, pika_logger = logging.getLogger(), logging.getLogger("pika")
    handlers, level, pika_level = root.handlers[:], root.level, pika_logger.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    pika_logger.setLevel(pika_level)


def refused_connection() -> None:
    """A real connection attempt to a port nothing listens on."""
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F?connection_attempts=1"
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.URLParameters(url))


def logged(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_a_refused_connection_leaves_its_logging_to_the_worker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # pika reports the attempt in several errors, one with a traceback, then raises; the
    # worker logs the exception itself.
    configure(logging.INFO)
    refused_connection()
    assert logged(capsys) == []


@pytest.mark.usefixtures("restore_logging")
def test_at_debug_level_pika_logs_everything(capsys: pytest.CaptureFixture[str]) -> None:
    configure(logging.DEBUG)
    refused_connection()
    entries = logged(capsys)
    assert any(e["level"] == "debug" and e["logger"].startswith("pika.") for e in entries)
    assert "Connection workflow failed: " in {e["message"][:28] for e in entries}


@pytest.mark.integration
@pytest.mark.usefixtures("restore_logging")
def test_pika_warnings_are_logged_and_its_info_is_not(
    vhost: Vhost, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(logging.INFO)
    with vhost.channel() as channel, pytest.raises(pika.exceptions.ChannelClosedByBroker):
        channel.queue_declare("missing", passive=True)
    entries = [e for e in logged(capsys) if e["logger"].startswith("pika.")]
    assert [e["level"] for e in entries] == ["warning"]
    assert "NOT_FOUND - no queue 'missing'" in entries[0]["message"]
