"""One row of the fault report (bench/faults.py renders the rows as the table in docs/faults.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figures:
    """What one fault scenario did to the messages published into it."""

    scenario: str
    # None where a scenario publishes no messages (the operator's).
    messages_in: int | None
    stored: int | None
    dead_lettered: int | None
    lost: int | None
    # A second effect in PostgreSQL: a second row for one match, or a row nobody asked for.
    duplicated: int
    # Extra copies of one message in the dead-letter queue (at-least-once into it).
    dead_letters_repeated: int | None
    recovery: str
    notes: str = ""


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f} s"
