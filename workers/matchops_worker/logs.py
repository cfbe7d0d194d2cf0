"""Structured logs: one JSON object per line on stderr, with the record's extra fields."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Final

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as is.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


# Where pika reports a connection attempt that failed or a connection that was lost: seven
# error records per failed attempt (one with a traceback), one per lost connection, all
# followed by the exception the worker logs once itself, with its cause, before reconnecting
# with backoff. During a broker outage they would bury every other line.
_CONNECTION_LOGGERS: Final = frozenset(
    {
        "pika.adapters.base_connection",
        "pika.adapters.utils.connection_workflow",
        "pika.adapters.utils.io_services_utils",
    }
)
_CONNECTION_MESSAGES: Final = frozenset(
    {
        "Connection workflow failed: %r",
        "Error in _create_connection().",
        "Unexpected connection close detected: %r",
    }
)


class _PikaConnectionNoise(logging.Filter):
    """Drops pika's records about failed and lost connections (see _CONNECTION_LOGGERS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pika."):
            return True
        return record.name not in _CONNECTION_LOGGERS and record.msg not in _CONNECTION_MESSAGES


def configure(level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON; quieten chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pika logs every connection step at INFO; its warnings and errors tell of what a user may
    # need to act on (a channel closed by the broker, a connection blocked by a resource alarm).
    pika_level = level if level <= logging.DEBUG else max(level, logging.WARNING)
    logging.getLogger("pika").setLevel(pika_level)
    if level > logging.DEBUG:
        handler.addFilter(_PikaConnectionNoise())
