"""The settings every connection of the worker to RabbitMQ uses."""

from __future__ import annotations

import socket

import pika


def connection_parameters(amqp_url: str, role: str = "") -> pika.URLParameters:
    """The worker's connection settings: a name the management UI shows, a blocked timeout."""
    parameters = pika.URLParameters(amqp_url)
    name = " ".join(part for part in ("matchops-worker", role, socket.gethostname()) if part)
    parameters.client_properties = {"connection_name": name}
    # A broker that blocks publishers (memory or disk alarm) would otherwise stall the
    # dead-letter and retry publishes forever; dropping the connection redelivers instead.
    if parameters.blocked_connection_timeout is None:
        parameters.blocked_connection_timeout = 60
    return parameters
