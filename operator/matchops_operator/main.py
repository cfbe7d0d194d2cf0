"""`matchops-operator`: settings from flags and environment, then the kopf reactor."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import kopf
from matchops_worker.durations import DurationError, parse_duration

from matchops_operator import handlers
from matchops_operator.config import PULL_POLICIES, OperatorSettings, is_pattern
from matchops_operator.desired.common import MANAGER, PullPolicy
from matchops_operator.kube import Kube
from matchops_operator.reconciler import Reconciler

FINALIZER = "matchops.dev/finalizer"
ANNOTATION_PREFIX = "matchops.dev"
# kopf's record of the spec it last handled, written once a handling is done.
DIFFBASE_KEY = "last-handled-configuration"
HANDLED_ANNOTATION = f"{ANNOTATION_PREFIX}/{DIFFBASE_KEY}"
# Seconds a replica counts as alive after its last keep-alive (kopf sends one every 5 to 10 s
# less than this): a standby takes over within this long of the active replica's crash. kopf's
# default, 60 s, would leave every pipeline unattended for up to a minute.
PEERING_LIFETIME = 15


def parse_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[OperatorSettings, argparse.Namespace]:
    """Operator settings from flags, each defaulting to its environment variable."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="matchops-operator",
        description="Runs MatchIngestion pipelines: scraper CronJob, RabbitMQ topology, "
        "worker Deployment sized to the backlog.",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        help="watch this namespace (repeat for several; globs allowed); default: "
        "$MATCHOPS_WATCH_NAMESPACES (comma-separated), else all namespaces",
    )
    parser.add_argument(
        "--poll-interval",
        default=env.get("MATCHOPS_POLL_INTERVAL", "10s"),
        help="how often each pipeline's backlog is read and drift repaired "
        "(duration; $MATCHOPS_POLL_INTERVAL, default 10s)",
    )
    parser.add_argument(
        "--worker-image",
        default=env.get("MATCHOPS_OPERATOR_IMAGE", ""),
        help="worker image when spec.workers.image is empty: the operator's own image "
        "($MATCHOPS_OPERATOR_IMAGE)",
    )
    parser.add_argument(
        "--image-pull-policy",
        choices=PULL_POLICIES,
        default=env.get("MATCHOPS_IMAGE_PULL_POLICY") or None,
        help="imagePullPolicy of the scraper and worker containers ($MATCHOPS_IMAGE_PULL_POLICY; "
        "default: Kubernetes' own, Always for :latest tags)",
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        default=int(env.get("MATCHOPS_LIVENESS_PORT", "8080")),
        help="port of the /healthz liveness endpoint, 0 to disable ($MATCHOPS_LIVENESS_PORT, "
        "default 8080)",
    )
    parser.add_argument(
        "--standalone",
        action=argparse.BooleanOptionalAction,
        default=_flag(env.get("MATCHOPS_STANDALONE", "false")),
        help="run without peering: only ever run one replica then ($MATCHOPS_STANDALONE)",
    )
    parser.add_argument(
        "--peering-name",
        default=env.get("MATCHOPS_PEERING_NAME", "matchops"),
        help="kopf peering object that lets one of several replicas act ($MATCHOPS_PEERING_NAME)",
    )
    parser.add_argument(
        "--retry-max-delay",
        default=env.get("MATCHOPS_RETRY_MAX_DELAY", "1m"),
        help="longest wait between retries of a failing pipeline (duration; "
        "$MATCHOPS_RETRY_MAX_DELAY, default 1m)",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: in-cluster credentials, else $KUBECONFIG)",
    )
    parser.add_argument(
        "--log-level",
        default=env.get("MATCHOPS_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    parser.add_argument(
        "--log-format",
        default=env.get("MATCHOPS_LOG_FORMAT", "json"),
        choices=["json", "plain"],
        help="log lines as JSON (default) or plain text ($MATCHOPS_LOG_FORMAT)",
    )
    args = parser.parse_args(argv)
    namespaces = args.namespace or [
        item.strip() for item in env.get("MATCHOPS_WATCH_NAMESPACES", "").split(",")
    ]
    try:
        poll = parse_duration(args.poll_interval)
        retry_max = parse_duration(args.retry_max_delay)
    except DurationError as exc:
        parser.error(str(exc))
    if poll <= 0:
        parser.error("--poll-interval must be positive")
    settings = OperatorSettings(
        namespaces=tuple(ns for ns in namespaces if ns),
        poll_interval=poll,
        worker_image=args.worker_image,
        image_pull_policy=cast(PullPolicy | None, args.image_pull_policy),
        liveness_port=args.liveness_port or None,
        standalone=args.standalone,
        peering_name=args.peering_name,
        retry_min_delay=min(5.0, retry_max),
        retry_max_delay=retry_max,
        kubeconfig=args.kubeconfig,
    )
    return settings, args


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    """kopf's settings: our finalizer and annotations, our own Events only."""
    configured = kopf.OperatorSettings()
    configured.persistence.finalizer = FINALIZER
    configured.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    configured.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key=DIFFBASE_KEY
    )
    # The reconciler records the Events users read; kopf's own would repeat them.
    configured.posting.enabled = False
    # Peering is used when its object exists and is skipped (with a warning) when it does not;
    # kopf would wait for it instead if the name were passed to kopf.operator().
    configured.peering.name = settings.peering_name
    configured.peering.standalone = settings.standalone
    configured.peering.priority = peering_priority(time.time_ns())
    configured.peering.lifetime = PEERING_LIFETIME
    configured.peering.clusterwide = not settings.namespaces
    # Listed namespaces are served as they are: no cluster-wide namespace (and CRD) watching,
    # which a namespaced installation has no permission for. Patterns need the listing.
    configured.scanning.disabled = bool(settings.namespaces) and not any(
        is_pattern(namespace) for namespace in settings.namespaces
    )
    # A resource's deletion waits for its poll timer to stop; when a poll is running then, kopf
    # looks again after this long (its default, a minute, would hold every deletion that long).
    configured.background.cancellation_polling = 1.0
    # Reconnect watches regularly so a silently dropped connection cannot stall the operator.
    configured.watching.server_timeout = 270
    configured.watching.client_timeout = 300
    return configured


def peering_priority(started_ns: int) -> int:
    """This replica's kopf peering priority: the microsecond it started.

    kopf pauses every replica when several share the highest priority (its default, 0, for
    all of them), so each replica needs its own. The one that started last acts: a rolling
    update hands over to the new version as soon as it runs.
    """
    return started_ns // 1_000


def build(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """The handler registry, with the reconciler and API client behind it."""
    kube = Kube.connect(settings.kubeconfig, instance=os.environ.get("HOSTNAME") or MANAGER)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, Reconciler(kube, settings), settings, kube.connection_info)
    return registry


async def run(settings: OperatorSettings) -> None:
    """Run the operator until it is stopped (SIGTERM, SIGINT)."""
    await kopf.operator(
        registry=build(settings),
        settings=kopf_settings(settings),
        standalone=settings.standalone,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=(
            f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    settings, args = parse_args(argv)
    kopf.configure(
        verbose=args.log_level == "debug",
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(args.log_level.upper())
    # One line per HTTP request or AMQP frame is noise at info level; their errors still show.
    for chatty in ("httpx", "httpx2", "pika"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("kopf.objects").addFilter(QuietPolls())
    asyncio.run(run(settings))


class QuietPolls(logging.Filter):
    """Drops kopf's line for each poll that went well: one per resource per poll interval.

    What a poll finds is in the status and Events; failed polls and every other handler still
    log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != f"Timer {handlers.POLL!r} succeeded."


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")
