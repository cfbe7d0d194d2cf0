"""The settings of the worker's broker connections."""

from __future__ import annotations

import socket

from matchops_worker.broker import connection_parameters


def test_a_connection_is_named_after_the_worker_its_role_and_host() -> None:
    consume = connection_parameters("amqp://guest:pw@broker:5672/%2F")
    dead_letter = connection_parameters("amqp://guest:pw@broker:5672/%2F", "dead-letter")
    host = socket.gethostname()
    assert consume.client_properties == {"connection_name": f"matchops-worker {host}"}
    assert dead_letter.client_properties == {
        "connection_name": f"matchops-worker dead-letter {host}"
    }


def test_a_blocked_connection_is_dropped_after_a_minute_unless_the_url_says_otherwise() -> None:
    assert connection_parameters("amqp://broker/").blocked_connection_timeout == 60
    custom = connection_parameters("amqp://broker/?blocked_connection_timeout=5")
    assert custom.blocked_connection_timeout == 5
