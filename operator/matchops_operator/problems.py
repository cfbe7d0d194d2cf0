"""Causes that keep part of a pipeline from working, worded so a user can act on them.

Adapters raise these; the reconciler turns them into a condition (reason + message) and an
Event, never into a crash.
"""

from __future__ import annotations

import logging

from matchops_operator.conditions import Part, State

log = logging.getLogger(__name__)


class Problem(Exception):  # noqa: N818 - a cause reported to the user, not a bug
    """A cause with a CamelCase reason for tools and a message for people."""

    def __init__(self, reason: str, message: str, *, state: State = "retrying") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.state = state

    def part(self, type_: str) -> Part:
        """The verdict on the part of the pipeline this cause stops."""
        return Part(type_, self.state, self.reason, self.message)


def stalled(reason: str, message: str) -> Problem:
    """A cause that persists until someone changes a spec, a Secret or the broker."""
    return Problem(reason, message, state="stalled")


def retrying(reason: str, message: str) -> Problem:
    """A cause that may pass on its own; retried with backoff."""
    return Problem(reason, message, state="retrying")


def as_problem(exc: Exception) -> Problem:
    """A Problem as it is; any other exception is a fault of the operator, logged with its
    traceback and reported as InternalError (retried with backoff) instead of a crash."""
    if isinstance(exc, Problem):
        return exc
    log.error("unexpected %s", type(exc).__name__, exc_info=exc)
    return retrying(
        "InternalError",
        f"unexpected {type(exc).__name__}: {exc}; the operator's log has the traceback",
    )
