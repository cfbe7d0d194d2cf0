"""`python -m matchops_devenv demo-cluster` (`make demo`): the whole pipeline on a local cluster.

Starts a Kubernetes control plane with a node (building the images it runs first when their
sources changed), RabbitMQ and PostgreSQL; installs the operator with the Helm chart; applies
a MatchIngestion whose scraper publishes a sample season with invalid messages mixed in; runs
the scraper now; follows the operator scaling the workers up on the backlog and down once it is
drained; prints what was stored, what was dead-lettered, `kubectl get` and `kubectl describe`;
then removes everything, or keeps it running with `--keep` until Ctrl-C. The end-to-end tests
drive the same steps (`pipeline`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from matchops_devenv import procs, toolchain
from matchops_devenv.access import KubectlError
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.controlplane import ControlPlane, ControlPlaneError
from matchops_devenv.images import ImageError
from matchops_devenv.node import Node, NodeError
from matchops_devenv.outcome import stored_matches, take_dead_letters
from matchops_devenv.pipeline import (
    Operator,
    Pipeline,
    PipelineError,
    Snapshot,
    Watch,
    install_operator,
    scraped_ingestion,
)
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.season import MatchState, Season
from matchops_devenv.targets import local_target

NAMESPACE = "ingest"
NAME = "u14-northeast"
QUEUE = "mlsnext-u14-northeast"
SCALE_DOWN_DELAY = 10
FAILURES = (
    KubectlError,
    ControlPlaneError,
    NodeError,
    ImageError,
    PipelineError,
    procs.ServiceError,
    toolchain.ToolchainError,
)


def default_state_dir() -> Path:
    """The demo's own cluster directory, beside `make cluster`'s."""
    return toolchain.cache_dir() / "demo"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add the `demo-cluster` command to the environment's command line."""
    parser = commands.add_parser(
        "demo-cluster",
        help="the whole pipeline on a local cluster: operator, scraper, workers, RabbitMQ, "
        "PostgreSQL (needs root)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the cluster, broker and database running until Ctrl-C, and print how to "
        "reach them",
    )
    parser.add_argument("--divisions", default="Northeast,Mid-Atlantic,Southeast")
    parser.add_argument("--teams", type=int, default=12, help="teams per division")
    parser.add_argument("--invalid", type=int, default=7, help="invalid messages to mix in")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="the demo cluster's directory (default: %(default)s)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    season = Season(
        divisions=tuple(d.strip() for d in args.divisions.split(",") if d.strip()),
        teams=args.teams,
        invalid=args.invalid,
    )
    # SIGTERM tears down like Ctrl-C does; so does SIGINT when a shell started the demo in
    # the background (and so had it ignore SIGINT).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    started = time.monotonic()
    try:
        code = _demo(season, args.state_dir, args.keep)
    except FAILURES as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("interrupted; everything is stopped")
        return 130
    say(f"done in {time.monotonic() - started:.0f}s")
    return code


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _demo(season: Season, state_dir: Path, keep: bool) -> int:
    say("starting a Kubernetes control plane and a node (images are built first if needed)")
    plane = ControlPlane(state_dir)
    plane.start()
    try:
        node = Node(plane, nodes_root=plane.layout.nodes)
        node.start()
        try:
            say(f"node {node.name} Ready ({node.timings})")
            say("starting RabbitMQ and PostgreSQL on this machine's loopback")
            with RabbitMQ() as broker, PostgreSQL() as postgres:
                dsn = postgres.create_database("matches")
                target = local_target(plane.access, node)
                say(
                    f"helm install matchops charts/matchops --namespace {NAMESPACE} "
                    f"(image {target.image}, poll interval 1s)"
                )
                operator = install_operator(target, NAMESPACE, poll_interval="1s")
                pipeline = Pipeline(target, NAMESPACE, NAME, operator=operator)
                code = _pipeline(pipeline, season, broker, dsn)
                if keep:
                    _keep(plane, node, operator, broker, dsn)
                return code
        finally:
            say("stopping the node, the control plane, RabbitMQ and PostgreSQL")
            node.stop()
    finally:
        plane.stop()


def _pipeline(pipeline: Pipeline, season: Season, broker: RabbitMQ, dsn: str) -> int:
    target = pipeline.target
    pipeline.create_secrets(broker.url(), dsn, broker.management_url)
    say(
        f"kubectl create secret generic {pipeline.broker_secret} / {pipeline.database_secret} "
        "(broker URL, management URL, database DSN)"
    )
    manifest = scraped_ingestion(
        target.image,
        season.scraper_args(),
        exchange="mlsnext",
        queue=QUEUE,
        routing_keys=["mlsnext.u14.northeast"],
        max_replicas=4,
        target_backlog_per_replica=100,
        scale_down_delay_seconds=SCALE_DOWN_DELAY,
    )
    pipeline.apply(manifest)
    say("kubectl apply --server-side -f - <<EOF")
    print(yaml.safe_dump(pipeline.manifest, sort_keys=False), end="")
    print("EOF")
    pipeline.wait("Ready")
    say("kubectl get mi: the topology is declared, nothing to consume, no worker runs")
    print(pipeline.table("-o", "wide"))

    say(f"kubectl create job --from=cronjob/{NAME}-scraper scrape-now")
    pipeline.start_scraper("scrape-now")
    expected = season.final_state()
    watch = Watch(pipeline, dsn)
    say("following the pipeline: backlog and workers as the operator reports them, its Events")
    show = Progress()
    watch.until(lambda s: s.stored == len(expected) and s.drained, "the season stored", 300, show)
    say(f"the scraper Job published: {pipeline.finish_scraper('scrape-now')}")
    watch.until(
        lambda s: s.scaled_to_zero,
        f"workers scaled down after the {SCALE_DOWN_DELAY}s scale-down delay",
        120,
        show,
    )
    say(f"at most {watch.peak_ready} workers served at once")

    stored = stored_matches(dsn)
    print_stored(stored, expected)
    print_dead_letters(Vhost("/", broker.url()), season)
    say(f"kubectl get mi -n {pipeline.namespace}")
    print(pipeline.table())
    say(f"kubectl describe mi {NAME} -n {pipeline.namespace}")
    print(pipeline.describe())
    return 0 if stored == expected else 1


class Progress:
    """Prints a line when what the operator reports changes, then each new Event."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, snapshot: Snapshot, events: list[dict[str, Any]]) -> None:
        backlog = snapshot.backlog
        line = (
            f"  backlog {backlog.get('ready', '?'):>4} ready {backlog.get('unacked', '?'):>4} "
            f"unacked   dead-lettered {backlog.get('deadLettered', '?'):>2}   "
            f"workers {snapshot.ready}/{snapshot.desired}   stored {snapshot.stored}"
        )
        if line != self.last:
            print(line, flush=True)
            self.last = line
        for event in events:
            print(f"  event {event['type']} {event['reason']}: {event['message']}", flush=True)


def print_stored(stored: dict[str, MatchState], expected: dict[str, MatchState]) -> None:
    statuses = Counter(match.status for match in stored.values())
    summary = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    verdict = (
        "equal to the season's final state"
        if stored == expected
        else f"DIFFERENT from the season's final state ({len(expected)} matches)"
    )
    say(f"PostgreSQL holds {len(stored)} matches ({summary}): {verdict}")
    results = [m for m in stored.values() if m.status == "completed"]
    for match in sorted(results, key=lambda m: (m.match_date, m.home_team))[:6]:
        score = f"{match.home_score}-{match.away_score}"
        print(f"  {match.match_date}  {match.home_team:>28} {score:^5} {match.away_team}")


def print_dead_letters(vhost: Vhost, season: Season) -> None:
    dead = take_dead_letters(vhost, f"{QUEUE}.dlq")
    say(f"dead-letter queue {QUEUE}.dlq: {len(dead)} messages (the season had {season.invalid})")
    for letter in dead:
        body = letter.body[:48].decode("utf-8", errors="replace")
        again = " (from a redelivery: may repeat an earlier copy)" if letter.redelivered else ""
        print(f"  {letter.reason:<17} {letter.error[:80]}{again}")
        print(f"  {'':<17} body: {body!r}")


def _keep(plane: ControlPlane, node: Node, operator: Operator, broker: RabbitMQ, dsn: str) -> None:
    """Keep everything running until Ctrl-C (or a component exits), saying how to reach it."""
    kubectl = toolchain.program("kubectl")
    say("the pipeline keeps running; from another terminal:")
    print(f"  export KUBECONFIG={plane.layout.kubeconfig}")
    print(f"  {kubectl} -n {NAMESPACE} get mi,cronjobs,deployments,pods")
    print(f"  {kubectl} -n {NAMESPACE} create job --from=cronjob/{NAME}-scraper scrape-again")
    print(f"  {kubectl} -n {operator.namespace} logs deployment/{operator.deployment}")
    print(f"  RabbitMQ management API: {broker.management_url}")
    print(f"  PostgreSQL: {dsn}")
    say("Ctrl-C stops everything")
    while (failed := plane.failed() or node.failed()) is None:
        time.sleep(1.0)
    say(f"{failed.name} exited; log {failed.log_path}")


def say(text: str) -> None:
    print(f"==> {text}", flush=True)
