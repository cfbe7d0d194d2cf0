"""Waiting for a condition: the value it came true with, or a failure that says what and why."""

import pytest
from matchops_devenv.waiting import WaitTimeoutError, wait_for


def test_the_first_truthy_value_is_returned() -> None:
    answers = iter([None, [], {"ready": 1}, {"ready": 2}])

    assert wait_for(lambda: next(answers), "ready", timeout=5, interval=0) == {"ready": 1}


def test_a_timeout_names_what_was_awaited_the_last_value_and_the_diagnosis() -> None:
    with pytest.raises(WaitTimeoutError) as failed:
        wait_for(
            lambda: [],
            "pods",
            timeout=0,
            diagnose=lambda: "pod/web: ErrImageNeverPull",
        )

    assert str(failed.value) == (
        "timed out after 0s waiting for pods; last: []\npod/web: ErrImageNeverPull"
    )
    # A test failure, as pytest reports it.
    assert isinstance(failed.value, AssertionError)
