import json
import logging

from matchops_worker.logs import JsonFormatter


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
