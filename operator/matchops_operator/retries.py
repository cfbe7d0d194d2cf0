"""When a failing step is tried again: the backoff rule, pure.

A failure that keeps the queue from being read holds the whole reconciliation: polls skip it
until its backoff has passed. A failure that keeps the workers from being applied (a missing
database Secret, a refused Deployment) holds that step only, so every poll still reads and
reports the backlog. Either way the wait doubles with each failure in a row, up to the maximum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Attempts:
    """Failures in a row of one step, and when it may be tried again."""

    failures: int = 0
    not_before: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.not_before

    def remaining(self, now: float) -> float:
        """Seconds until the step may be tried again (0 once it may)."""
        return max(self.not_before - now, 0.0)


def after_attempt(
    attempts: Attempts, *, failed: bool, now: float, backoff: Callable[[int], float]
) -> Attempts:
    """The record after an attempt ending at `now`: a success forgets the failures, a failure
    waits `backoff(failures in a row)` seconds before the next attempt."""
    if not failed:
        return Attempts()
    failures = attempts.failures + 1
    return Attempts(failures, now + backoff(failures))
