"""Run the fault suite and print its figures as the table in docs/faults.md.

Every scenario of tests/faults records one row (messages in, stored, dead-lettered, lost,
duplicated, dead letters repeated, recovery time) when $MATCHOPS_FAULTS_REPORT names a file;
this runs the suite that way, against the real RabbitMQ, PostgreSQL and Kubernetes API server
the tests start, and renders the rows. `--write` puts the table into a Markdown file between
the markers `<!-- faults:begin -->` and `<!-- faults:end -->`. Run with `make faults-report`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
COLUMNS = (
    ("scenario", "scenario"),
    ("messages in", "messages_in"),
    ("stored", "stored"),
    ("dead-lettered", "dead_lettered"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("dead letters repeated", "dead_letters_repeated"),
    ("recovery time", "recovery"),
    ("notes", "notes"),
)


def cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines.extend("| " + " | ".join(cell(row[key]) for _, key in COLUMNS) + " |" for row in rows)
    return "\n".join(lines)


def run(command: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run pytest, showing its output; its exit code and final summary line."""
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        last = ""
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last = line.strip(" =\n")
    return process.returncode, last


def write(target: Path, text: str) -> None:
    """Replace what stands between the markers of `target` with `text`."""
    document = target.read_text()
    head, found, rest = document.partition(BEGIN)
    _, ended, tail = rest.partition(END)
    if not (found and ended):
        raise SystemExit(f"{target} has no {BEGIN} ... {END} markers")
    target.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short variants only")
    parser.add_argument("--write", type=Path, help="Markdown file to put the table into")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, e.g. -k kills")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="matchops-faults-") as scratch:
        rows_file = Path(scratch) / "rows.jsonl"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "tests/faults",
            "-p",
            "no:cacheprovider",
            *(["-m", "not slow"] if args.quick else []),
            *args.pytest_args,
        ]
        started = time.monotonic()
        code, ran = run(command, {**os.environ, "MATCHOPS_FAULTS_REPORT": str(rows_file)})
        elapsed = time.monotonic() - started
        lines = rows_file.read_text().splitlines() if rows_file.exists() else []
    selection = "short variants" if args.quick else "all variants, the slow ones included"
    rendered = (
        f"{table(json.loads(line) for line in lines)}\n\n"
        f"Measured by `bench/faults.py` ({selection}) on {time.strftime('%Y-%m-%d')}: {ran}, "
        f"{elapsed / 60:.1f} min on {os.cpu_count()} shared cores."
    )
    print()
    print(rendered)
    if args.write:
        write(args.write, rendered)
        print(f"\nwritten to {args.write}")
    return code


if __name__ == "__main__":
    sys.exit(main())
