"""Reconnection delays."""

from matchops_worker.backoff import Backoff


def test_backoff_grows_to_its_maximum_and_resets() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    delays = [backoff.next() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert 0.8 * nominal <= delay <= 1.2 * nominal
    backoff.reset()
    assert backoff.next() <= 1.2
