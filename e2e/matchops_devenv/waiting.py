"""Waiting for a condition on a real system: a pod, a queue, a resource's status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """A condition did not come true in time; the message names it and the last value seen."""


def wait_for(
    check: Callable[[], T | None],
    what: str,
    timeout: float = 60.0,
    *,
    interval: float = 0.25,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy, and return that.

    `check` runs once more at the deadline. On timeout, WaitTimeoutError names `what`, the last
    value and, when given, what `diagnose()` reports about the system.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            details = f"\n{diagnose()}" if diagnose is not None else ""
            raise WaitTimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}{details}"
            )
        time.sleep(interval)
