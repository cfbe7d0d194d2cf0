"""The scraper CronJob: the producer that publishes matches to the pipeline's exchange."""

from __future__ import annotations

from lightkube.models.batch_v1 import CronJobSpec, JobSpec, JobTemplateSpec
from lightkube.models.core_v1 import Container, PodSpec, PodTemplateSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import CronJob
from matchops_worker.topology import Topology

from matchops_operator.desired.common import (
    Owner,
    PullPolicy,
    container_security,
    labels,
    merge_env,
    metadata,
    plain_env,
    pod_security,
    resources,
    secret_env,
    tmp_mount,
    tmp_volume,
)
from matchops_operator.spec import BrokerSpec, ScraperSpec

CONTAINER = "scraper"
# Enough finished Jobs to read the last few runs' logs, few enough not to pile up.
SUCCESSFUL_JOBS_KEPT = 3
FAILED_JOBS_KEPT = 3
# A run missed while the controller was away still starts if it is at most this late.
STARTING_DEADLINE_SECONDS = 300
# A failed scrape is retried twice; the workers' upsert makes a re-published match harmless.
BACKOFF_LIMIT = 2


def scraper_cronjob(
    owner: Owner,
    scraper: ScraperSpec,
    broker: BrokerSpec,
    topology: Topology,
    pull_policy: PullPolicy | None = None,
) -> CronJob:
    """The CronJob that runs the scraper on its schedule, one Job at a time, each Job ended
    (failed) once it has run `activeDeadlineSeconds`."""
    env = [
        # The broker URL under both names: matchops producers read MATCHOPS_AMQP_URL, the
        # legacy Celery scraper reads CELERY_BROKER_URL.
        secret_env("MATCHOPS_AMQP_URL", broker.secret_ref),
        secret_env("CELERY_BROKER_URL", broker.secret_ref),
        *plain_env(
            {
                "MATCHOPS_EXCHANGE": topology.exchange,
                "MATCHOPS_QUEUE": topology.queue,
                "MATCHOPS_ROUTING_KEY": topology.routing_keys[0],
            }
        ),
    ]
    container = Container(
        name=CONTAINER,
        image=scraper.image,
        imagePullPolicy=pull_policy,
        args=list(scraper.args) or None,
        env=merge_env(env, scraper.env),
        resources=resources(scraper.resources),
        securityContext=container_security(),
        volumeMounts=[tmp_mount()],
    )
    pod = PodSpec(
        containers=[container],
        restartPolicy="Never",
        automountServiceAccountToken=False,
        securityContext=pod_security(),
        volumes=[tmp_volume()],
    )
    return CronJob(
        apiVersion="batch/v1",
        kind="CronJob",
        metadata=metadata(owner, "scraper"),
        spec=CronJobSpec(
            schedule=scraper.schedule,
            timeZone=scraper.time_zone,
            suspend=scraper.suspend,
            concurrencyPolicy="Forbid",
            startingDeadlineSeconds=STARTING_DEADLINE_SECONDS,
            successfulJobsHistoryLimit=SUCCESSFUL_JOBS_KEPT,
            failedJobsHistoryLimit=FAILED_JOBS_KEPT,
            jobTemplate=JobTemplateSpec(
                metadata=ObjectMeta(labels=labels(owner, "scraper")),
                spec=JobSpec(
                    backoffLimit=BACKOFF_LIMIT,
                    activeDeadlineSeconds=scraper.active_deadline_seconds,
                    template=PodTemplateSpec(
                        metadata=ObjectMeta(labels=labels(owner, "scraper")),
                        spec=pod,
                    ),
                ),
            ),
        ),
    )
