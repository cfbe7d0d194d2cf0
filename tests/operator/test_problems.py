"""Causes reported to the user: an unexpected exception becomes one too, never a crash."""

from __future__ import annotations

import logging

import pytest
from matchops_operator.problems import as_problem, stalled


def test_a_problem_stays_as_it_is() -> None:
    problem = stalled("SecretNotFound", "Secret ns/rabbitmq not found")
    assert as_problem(problem) is problem


def test_any_other_exception_is_an_internal_error_retried_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        problem = as_problem(KeyError("replicas"))
    assert (problem.reason, problem.state) == ("InternalError", "retrying")
    assert problem.message == (
        "unexpected KeyError: 'replicas'; the operator's log has the traceback"
    )
    (record,) = caplog.records
    assert record.exc_info is not None
    assert record.exc_info[0] is KeyError
