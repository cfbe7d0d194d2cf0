"""The backoff rule: a failure waits longer each time in a row, a success forgets them all."""

from __future__ import annotations

from matchops_operator.config import OperatorSettings
from matchops_operator.retries import Attempts, after_attempt

BACKOFF = OperatorSettings(retry_min_delay=5.0, retry_max_delay=60.0).backoff


def test_failures_in_a_row_wait_longer_each_time_up_to_the_maximum() -> None:
    attempts, gaps, now = Attempts(), [], 1000.0
    for _ in range(6):
        assert attempts.due(now)
        attempts = after_attempt(attempts, failed=True, now=now, backoff=BACKOFF)
        gaps.append(attempts.not_before - now)
        now = attempts.not_before
    assert gaps == [5, 10, 20, 40, 60, 60]
    assert attempts.failures == 6


def test_a_step_is_not_due_until_its_backoff_has_passed() -> None:
    attempts = after_attempt(Attempts(), failed=True, now=100.0, backoff=BACKOFF)
    assert not attempts.due(104.9)
    assert attempts.remaining(102.0) == 3.0
    assert attempts.due(105.0)
    assert attempts.remaining(200.0) == 0.0


def test_a_success_forgets_the_failures() -> None:
    failing = Attempts()
    for now in (0.0, 5.0, 15.0):
        failing = after_attempt(failing, failed=True, now=now, backoff=BACKOFF)
    assert after_attempt(failing, failed=False, now=40.0, backoff=BACKOFF) == Attempts()
    assert Attempts().due(0.0)
