"""pytest fixtures for the end-to-end scenarios: the operator installed with Helm, and pipelines.

On the local cluster (the default) they use the session's `cluster`, `node`, `rabbitmq` and
`postgres`; on a cluster named by `MATCHOPS_E2E_KUBECONFIG` (kind, see `targets`) they start
their own RabbitMQ and PostgreSQL on the address its pods reach. One operator release serves
the whole session, in a namespace of its own, where each test's pipelines live.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from matchops_devenv.access import KubectlError
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.pipeline import Operator, Pipeline, Target, install_operator
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.targets import external_cluster, external_target, local_target


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def e2e_target(request: pytest.FixtureRequest) -> Target:
    """The cluster the scenarios run on, with the project image on its nodes."""
    external = external_cluster(os.environ)
    if external is not None:
        return external_target(external)
    return local_target(request.getfixturevalue("cluster"), request.getfixturevalue("node"))


@pytest.fixture(scope="session")
def e2e_broker(request: pytest.FixtureRequest) -> Iterator[RabbitMQ]:
    """The RabbitMQ the pipelines use, reachable from the target's pods."""
    external = external_cluster(os.environ)
    if external is None:
        yield request.getfixturevalue("rabbitmq")
        return
    with RabbitMQ(listen=external.host_address) as broker:
        yield broker


@pytest.fixture(scope="session")
def e2e_postgres(request: pytest.FixtureRequest) -> Iterator[PostgreSQL]:
    """The PostgreSQL the pipelines use, reachable from the target's pods."""
    external = external_cluster(os.environ)
    if external is None:
        yield request.getfixturevalue("postgres")
        return
    with PostgreSQL(listen=external.host_address, fsync=False) as server:
        yield server


@pytest.fixture(scope="session")
def e2e_operator(e2e_target: Target) -> Iterator[Operator]:
    """The operator, installed with the Helm chart into a namespace it serves, running as a pod.

    The CRD stays when the release goes, as the chart keeps it: deleting it would wait for
    every MatchIngestion in the cluster, other tests' included, to lose its finalizer.
    """
    operator = install_operator(e2e_target, f"e2e-{_suffix()}")
    try:
        yield operator
    finally:
        operator.uninstall()
        e2e_target.kubectl("delete", "namespace", operator.namespace, "--wait=false")


@pytest.fixture
def e2e_vhost(e2e_broker: RabbitMQ) -> Iterator[Vhost]:
    """A fresh virtual host for one test's pipelines."""
    name = f"e2e-{_suffix()}"
    url = e2e_broker.create_vhost(name)
    yield Vhost(name, url)
    e2e_broker.delete_vhost(name)


@pytest.fixture
def e2e_database(e2e_postgres: PostgreSQL) -> Iterator[str]:
    """A fresh, empty database (the workers' init container migrates it); returns its DSN."""
    name = f"e2e_{_suffix()}"
    dsn = e2e_postgres.create_database(name)
    yield dsn
    e2e_postgres.drop_database(name)


@pytest.fixture
def pipelines(e2e_target: Target, e2e_operator: Operator) -> Iterator[Callable[[str], Pipeline]]:
    """Make pipelines in the operator's namespace; each is deleted after the test."""
    made: list[Pipeline] = []

    def make(name: str) -> Pipeline:
        pipeline = Pipeline(e2e_target, e2e_operator.namespace, name, operator=e2e_operator)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        try:
            pipeline.delete()
        except KubectlError:
            # The operator could not finish its finalizer: let the resource go anyway.
            pipeline.kubectl(
                "patch",
                "matchingestion",
                pipeline.name,
                "--type=merge",
                "-p",
                '{"metadata": {"finalizers": null}}',
                check=False,
            )
        for secret in (pipeline.broker_secret, pipeline.database_secret):
            pipeline.kubectl("delete", "secret", secret, "--ignore-not-found", check=False)
