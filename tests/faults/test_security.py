"""Security properties, checked against the repository and the real systems.

RBAC (no wildcards, Secrets get-only and never cluster-wide, in every chart and kustomize
rendering) is checked by tests/deploy/test_rbac.py, and the desired builders' security
contexts by tests/operator/test_desired.py; these cover the rest: no default credentials
anywhere, Secret values never leaving their Secrets in a running cluster, every pod passing the
API server's restricted Pod Security admission, the operator's own Deployment restricted in
every rendering, pickle never unpickled, and SQL that carries data only as parameters.
"""

from __future__ import annotations

import ast
import functools
import json
import pickle
import re
import secrets
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deploy.render import MANIFESTS, Obj, chart, kustomize
from matchops_devenv.access import ClusterAccess
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.namespace import CRD, Namespace, install_crd, sample, wait_for
from matchops_devenv.outcome import stored_rows
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_devenv.toolchain import REPO_ROOT
from matchops_worker.contract import CELERY_TASKS, celery_message
from psycopg import sql

from .harness import QUEUE, WorkerPool, publish, topology
from .operator_run import OperatorProcess
from .workload import GOOD, Outgoing

# --- no default credentials ----------------------------------------------------------------

# What the docs and samples show where a reader puts their own credentials.
PLACEHOLDERS = {("user", "pass"), ("user", "password"), ("USER", "PASSWORD")}
CREDENTIALS_IN_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://([^/\s:@'\"`<>]+):([^/\s@'\"`<>]*)@")
# A password setting with a value that ships as a default.
WELL_KNOWN = re.compile(
    r"(pass(word)?|passwd|_pass|secret)\w*[\"']?\s*[:=]\s*[\"']?"
    r"(guest|admin|postgres|password|changeme|secret|root|rabbitmq|matchops|\d+)[\"']?\s*$",
    re.IGNORECASE | re.MULTILINE,
)


def shipped_files() -> list[Path]:
    """Every tracked file but the tests' own fixtures and the lock file."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [
        REPO_ROOT / name
        for name in listed
        if not name.startswith("tests/") and name != "uv.lock" and (REPO_ROOT / name).is_file()
    ]


def test_no_default_credentials_anywhere() -> None:
    found = []
    for path in shipped_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            where = f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
            if WELL_KNOWN.search(line):
                found.append(where)
            for user, password in CREDENTIALS_IN_URL.findall(line):
                if (user, password) not in PLACEHOLDERS and not password.startswith("{"):
                    found.append(where)
    assert not found, "credentials in the repository:\n" + "\n".join(found)


def test_the_scan_finds_what_it_looks_for() -> None:
    assert CREDENTIALS_IN_URL.findall("url: amqp://guest:guest@rabbitmq:5672/") == [
        ("guest", "guest")
    ]
    assert WELL_KNOWN.search("default_pass = guest")
    assert WELL_KNOWN.search('  password: "changeme"')
    assert WELL_KNOWN.search("POSTGRES_PASSWORD=postgres")
    assert not WELL_KNOWN.search("--serviceaccount=matchops:matchops")
    assert CREDENTIALS_IN_URL.findall("postgresql://user:password@host/db") == [
        ("user", "password")
    ]


# --- Secrets by reference, pods restricted, in a running cluster -----------------------------


@pytest.fixture
def restricted(cluster: ClusterAccess, namespace: str) -> Namespace:
    """The test's namespace, enforcing the restricted Pod Security Standard."""
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    install_crd(cluster, CRD, "matchingestions.matchops.dev")
    return Namespace(cluster, namespace)


CREDENTIAL_VARIABLES = ("MATCHOPS_AMQP_URL", "CELERY_BROKER_URL", "MATCHOPS_DATABASE_DSN")


def namespace_objects(space: Namespace) -> str:
    """Everything in the namespace but its Secrets, as JSON text."""
    kinds = "all,events,configmaps,serviceaccounts,matchingestions"
    return space.kubectl("get", kinds, "-o", "json")


@pytest.mark.integration
@pytest.mark.cluster
def test_secret_values_stay_in_their_secrets_and_pods_run_restricted(
    restricted: Namespace,
    vhost: Vhost,
    rabbitmq: RabbitMQ,
    tmp_path: Path,
) -> None:
    database_password = secrets.token_urlsafe(16)
    restricted.secret("rabbitmq", {"url": vhost.url, "management-url": rabbitmq.management_url})
    restricted.secret(
        "postgres", {"dsn": f"postgresql://matchops:{database_password}@postgres:5432/matches"}
    )
    restricted.apply(sample("legacy-celery.yaml", workers__minReplicas=1))
    operator = OperatorProcess(tmp_path, restricted.cluster, restricted.name, "operator")
    operator.start()
    try:
        restricted.wait_condition("matches", "TopologyReady", "True")
        # The Job controller and the ReplicaSet controller create the pods: admission decides.
        restricted.kubectl("create", "job", "scrape-now", "--from=cronjob/matches-scraper")
        pods = wait_for(
            lambda: len(restricted.get("pods")["items"]) >= 2 and restricted.get("pods"),
            "a worker pod and a scraper pod",
        )
        dumped = namespace_objects(restricted)
    finally:
        operator.stop()
    refused = [
        e["message"] for e in json.loads(dumped)["items"] if e.get("reason") == "FailedCreate"
    ]
    assert not refused, refused
    for password in (rabbitmq.password, database_password):
        assert password not in dumped, "a Secret's value was copied into an object"
        assert password not in operator.log, "a Secret's value was logged"
    for pod in pods["items"]:
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        for container in [*spec["containers"], *spec.get("initContainers", [])]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            for var in container.get("env", []):
                if var["name"] in CREDENTIAL_VARIABLES:
                    assert "value" not in var
                    assert var["valueFrom"]["secretKeyRef"]["name"] in ("rabbitmq", "postgres")


# --- the operator's own Deployment, as the chart and kustomize render it ---------------------

RENDERINGS: dict[str, Callable[[], list[Obj]]] = {
    "chart defaults": lambda: chart(),
    "chart cluster-wide": lambda: chart(
        {"watch": {"mode": "cluster"}, "rbac": {"secretNamespaces": ["ingest"]}}
    ),
    "chart peering": lambda: chart({"operator": {"replicas": 2}, "peering": {"enabled": True}}),
    **{
        f"kustomize {overlay}": functools.partial(kustomize, MANIFESTS / overlay)
        for overlay in ("base", "overlays/namespaced", "overlays/cluster-wide", "overlays/local")
    },
}


def pod_specs(objs: list[Obj]) -> Iterator[dict[str, Any]]:
    for obj in objs:
        template = obj.get("spec", {}).get("template")
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job") and template:
            yield template["spec"]


@pytest.mark.parametrize("render", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_rendered_workloads_run_restricted_and_ship_no_secrets(
    render: Callable[[], list[Obj]],
) -> None:
    objs = render()
    assert not [o for o in objs if o["kind"] == "Secret"], "a Secret is shipped with its value"
    specs = list(pod_specs(objs))
    assert specs
    for pod in specs:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(forbidden)
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v]
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "add" not in security["capabilities"]
            assert not security.get("privileged")
            for var in container.get("env", []):
                assert not CREDENTIALS_IN_URL.search(str(var.get("value", ""))), var


# --- pickle --------------------------------------------------------------------------------


class _Trap:
    """Unpickling this creates a file: the proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.path,))


@pytest.mark.integration
def test_a_pickled_celery_task_is_dead_lettered_never_unpickled(
    vhost: Vhost, database: str, tmp_path: Path
) -> None:
    trap = tmp_path / "unpickled"
    body = pickle.dumps(((_Trap(trap),), {}, {}))
    task = celery_message(GOOD, task=CELERY_TASKS[0])
    layout = topology()
    pool = WorkerPool(tmp_path, vhost.url, database, layout)
    pool.start(1)
    try:
        message = Outgoing(
            "pickled",
            body,
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers=task.headers,
        )
        publish(vhost, [message], layout)
        pool.wait_handled(1, timeout=30)
    finally:
        pool.stop()
    (dead,) = vhost.take(layout.dead_letter_queue)
    assert dead.body == body
    assert dead.headers["x-matchops-reason"] == "unsupported-content-type"
    assert "application/x-python-serialize" in dead.headers["x-matchops-error"]
    assert not trap.exists()
    assert vhost.depth(QUEUE) == 0


def test_the_trap_would_spring_if_unpickled(tmp_path: Path) -> None:
    trap = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(_Trap(trap)))  # noqa: S301 - the point of the check
    assert trap.exists()


# --- SQL -----------------------------------------------------------------------------------

STORE = REPO_ROOT / "workers" / "matchops_worker" / "store.py"
CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")


def formatted_sql(tree: ast.Module) -> list[str]:
    """SQL passed to execute() that interpolates anything but module constants."""
    problems = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "execute"
            and node.args
        ):
            continue
        statement = node.args[0]
        where = f"line {node.lineno}: {ast.unparse(statement)[:80]}"
        if isinstance(statement, ast.BinOp) or (
            isinstance(statement, ast.Call)
            and isinstance(statement.func, ast.Attribute)
            and statement.func.attr == "format"
        ):
            problems.append(where)
        if isinstance(statement, ast.JoinedStr):
            for part in statement.values:
                if isinstance(part, ast.FormattedValue) and not (
                    isinstance(part.value, ast.Name) and CONSTANT.fullmatch(part.value.id)
                ):
                    problems.append(where)
    return problems


def test_store_sql_interpolates_only_constants() -> None:
    assert formatted_sql(ast.parse(STORE.read_text())) == []


def test_the_sql_scan_catches_formatted_values() -> None:
    bad = ast.parse(
        "conn.execute(f\"SELECT * FROM t WHERE name = '{name}'\")\n"
        'conn.execute("SELECT %s" % name)\n'
        'conn.execute("SELECT {}".format(name))\n'
        'conn.execute(f"SELECT * FROM {TABLE}", [name])\n'
    )
    assert len(formatted_sql(bad)) == 3


HOSTILE = [
    "'); DROP TABLE matches;--",
    "Robert'); DROP TABLE teams; --",
    '" OR 1=1; --',
    "$$; DROP TABLE seasons; $$",
    "%s %(name)s {0} \\x00",
    "\\'; DELETE FROM matches WHERE ''='",
]


@pytest.fixture
def statement_log(postgres: PostgreSQL, database: str) -> Callable[[str], list[str]]:
    """The server's log lines mentioning a text, with every statement of this database logged."""
    name = database.rsplit("/", 1)[1]
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(sql.Identifier(name))
        )
    start = postgres.log_path.stat().st_size

    def lines(text: str) -> list[str]:
        with postgres.log_path.open(errors="replace") as log:
            log.seek(start)
            return [line for line in log if text in line]

    return lines


@pytest.mark.integration
def test_hostile_names_are_stored_verbatim_as_parameters(
    vhost: Vhost,
    database: str,
    tmp_path: Path,
    statement_log: Callable[[str], list[str]],
) -> None:
    marker = uuid.uuid4().hex[:8]
    matches = [
        {**GOOD, "home_team": f"{name} {marker}", "external_match_id": f"hostile-{number}"}
        for number, name in enumerate(HOSTILE)
    ]
    layout = topology()
    pool = WorkerPool(tmp_path, vhost.url, database, layout)
    pool.start(1)
    try:
        publish(
            vhost,
            [Outgoing(m["external_match_id"], json.dumps(m).encode()) for m in matches],
            layout,
        )
        pool.wait_handled(len(matches), timeout=30)
    finally:
        pool.stop()
    stored = {state.home_team for _, state in stored_rows(database)}
    assert stored == {m["home_team"] for m in matches}
    logged = statement_log(marker)
    assert logged, "the statement log shows nothing: the check would prove nothing"
    # The names reach PostgreSQL only as parameter values, never inside a statement's text.
    assert all("parameters:" in line for line in logged), logged
    assert vhost.depth(layout.dead_letter_queue) == 0
