"""pytest fixtures: one real RabbitMQ node and one real PostgreSQL server per test session.

Both start lazily, the first time a test asks for them, so unit-test runs start nothing. Each
test then gets its own virtual host (`vhost`) and its own database (`database`, a copy of a
migrated template), so tests never see each other's messages or rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from matchops_devenv.broker_tools import Vhost
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ

TEMPLATE_DATABASE = "matchops_template"


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    """A RabbitMQ node on free loopback ports, for the whole session."""
    broker = RabbitMQ()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgreSQL]:
    """A PostgreSQL server on a free loopback port, for the whole session (fsync off)."""
    server = PostgreSQL(fsync=False)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def migrated_template(postgres: PostgreSQL) -> str:
    """A database with the worker's schema, copied for each test; returns its name."""
    from matchops_worker.store import migrate

    migrate(postgres.create_database(TEMPLATE_DATABASE))
    return TEMPLATE_DATABASE


@pytest.fixture
def database(postgres: PostgreSQL, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test; returns its DSN."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    dsn = postgres.create_database(name, template=migrated_template)
    yield dsn
    postgres.drop_database(name)


@pytest.fixture
def empty_database(postgres: PostgreSQL) -> Iterator[str]:
    """A fresh database without the worker's schema; returns its DSN."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    dsn = postgres.create_database(name)
    yield dsn
    postgres.drop_database(name)


@pytest.fixture
def vhost(rabbitmq: RabbitMQ) -> Iterator[Vhost]:
    """A fresh virtual host for one test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    url = rabbitmq.create_vhost(name)
    yield Vhost(name=name, url=url)
    rabbitmq.delete_vhost(name)


@pytest.fixture
def vhost_user(rabbitmq: RabbitMQ, vhost: Vhost) -> Iterator[str]:
    """The name of a broker user for one test; `rabbitmq.set_user` creates it and sets its
    permissions on the test's vhost."""
    name = f"user-{uuid.uuid4().hex[:12]}"
    yield name
    rabbitmq.delete_user(name)
