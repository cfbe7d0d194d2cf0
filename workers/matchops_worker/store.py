"""PostgreSQL: schema migrations, and batched find-or-create and upsert of matches.

One batch is one transaction: the teams, seasons, age groups and divisions it names are
created when missing (`ON CONFLICT DO NOTHING`, keys sorted), then its matches are upserted
in identity order, all in one pipelined round trip; a batch whose names are all known is a
single statement, a transaction of its own. The upsert itself enforces the ordering
rules in SQL (an older report never overwrites a newer one; an identical report writes
nothing), so it stays right when several workers write the same match at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal

import orjson
import psycopg

from matchops_worker.batch import Collapsed, Outcome, collapse
from matchops_worker.contract import STATUS_RANK, MatchReport, name_key

log = logging.getLogger(__name__)

MIGRATIONS_TABLE: Final = "matchops_schema_migrations"
# pg_advisory_lock key serialising `matchops-worker migrate` runs: "matchops" in ASCII.
MIGRATION_LOCK: Final = int.from_bytes(b"matchops", "big")
# How a failed batch is handled depends on the SQLSTATE class of the error:
# - data exception, integrity violation: some report's data is at fault; retrying cannot help;
# - transaction rollback (serialization failure, deadlock): a clash with another writer; it
#   fails fast and a retry usually succeeds;
# - anything else (connection lost, timeout, missing schema, lack of resources): the database
#   is not fit to take batches now, whatever they hold.
# The first two are narrowed down by splitting the batch, so only the reports at fault (or
# clashing again) leave the batch; the last one sends the whole batch back to the queue.
DATA_FAULT_CLASSES: Final = ("22", "23")
CLASH_CLASSES: Final = ("40",)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The schema migrations shipped with the worker, in version order."""
    folder = resources.files("matchops_worker") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


LATEST_VERSION: Final = migrations()[-1].version


def migrate(dsn: str) -> list[Migration]:
    """Apply missing migrations, each in its own transaction; safe to run concurrently."""
    applied: list[Migration] = []
    with psycopg.connect(dsn, autocommit=True, application_name="matchops-worker migrate") as conn:
        # Replicas starting together all run this: the advisory lock lets one apply and the
        # others find the work done.
        conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK])
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                "version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}  # noqa: S608
            for migration in migrations():
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",  # noqa: S608
                        [migration.version, migration.name],
                    )
                log.info(
                    "applied migration",
                    extra={"version": migration.version, "migration": migration.name},
                )
                applied.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK])
    return applied


class StoreUnavailable(RuntimeError):  # noqa: N818 - reads as a state, like TimeoutError
    """The database could not take the batch now (retry later); the cause is chained."""


class SchemaOutdated(RuntimeError):  # noqa: N818 - reads as a state
    """The database schema is older than this worker needs."""


@dataclass(frozen=True)
class RowRejected:
    """The database refused one report (its data is at fault): it goes to the dead-letter queue."""

    error: str


@dataclass(frozen=True)
class RowDeferred:
    """One report clashed with another writer even alone: it goes through the retry delays."""

    error: str


Result = Outcome | RowRejected | RowDeferred


@dataclass(frozen=True)
class _EntityInsert:
    table: EntityTable
    rows: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class _Upsert:
    sql: bytes
    group: list[Collapsed]
    rows: str


@dataclass(frozen=True)
class PreparedBatch:
    """A batch ready to send: its reports, the new reference names, the upsert parameters."""

    reports: tuple[MatchReport, ...]
    entities: tuple[_EntityInsert, ...]
    upserts: tuple[_Upsert, ...]
    # Whether some reference names were left out because they are known to exist.
    relies_on_cache: bool = False


class Store:
    """The worker's one connection to PostgreSQL; writes from one thread at a time."""

    def __init__(self, dsn: str, statement_timeout: float = 30.0, connect_timeout: int = 10):
        self.dsn = dsn
        self.statement_timeout = statement_timeout
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        # Reference names known to be committed, so a batch only inserts new ones; bounded
        # by the number of teams, seasons, age groups and divisions there are.
        self._known: set[tuple[EntityTable, str]] = set()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def schema_version(self) -> int:
        """The applied schema version (0 before any migration)."""
        try:
            with self._session() as conn, conn.transaction():
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [MIGRATIONS_TABLE])
                row = exists.fetchone()
                if not row or not row[0]:
                    return 0
                version = conn.execute(f"SELECT max(version) FROM {MIGRATIONS_TABLE}").fetchone()  # noqa: S608
                return int(version[0]) if version and version[0] is not None else 0
        except psycopg.Error as exc:
            self.close()  # the next attempt starts from a new connection
            raise StoreUnavailable(f"database unavailable: {_describe(exc)}") from exc

    def check_schema(self) -> int:
        """Raise SchemaOutdated unless the migrations this worker needs are applied."""
        version = self.schema_version()
        if version < LATEST_VERSION:
            raise SchemaOutdated(
                f"database schema is at version {version}, this worker needs {LATEST_VERSION}: "
                "run `matchops-worker migrate`"
            )
        return version

    def prepare(self, reports: Sequence[MatchReport]) -> PreparedBatch:
        """Everything a batch's transaction sends, computed without touching the database.

        The worker prepares a batch in its consuming thread, so that the writing thread only
        waits on PostgreSQL.
        """
        winners = collapse(reports)
        entities = []
        cached = False
        for table, names in _entities(winners):
            new = sorted(key for key in names if (table, key) not in self._known)
            cached = cached or len(new) < len(names)
            if new:
                rows = orjson.dumps([[key, names[key]] for key in new]).decode()
                entities.append(_EntityInsert(table, rows, tuple(new)))
        upserts = []
        for kind in ("external", "natural"):
            group = [w for w in winners if (w.identity[0] == "external") == (kind == "external")]
            if group:
                upserts.append(_Upsert(_UPSERT_SQL[kind], group, _rows(group)))
        return PreparedBatch(tuple(reports), tuple(entities), tuple(upserts), cached)

    def write(self, batch: Sequence[MatchReport] | PreparedBatch) -> list[Result]:
        """Store a batch; one result per report, in order.

        The batch is one transaction. When the database refuses it because of some report's
        data, or it clashes with another writer, the batch is split until the reports at fault
        are isolated, so the others are stored. Raises StoreUnavailable when the database
        cannot take batches at all.
        """
        prepared = batch if isinstance(batch, PreparedBatch) else self.prepare(batch)
        positions = list(range(len(prepared.reports)))
        results: dict[int, Result] = {}
        self._write_isolating(positions, prepared, results)
        return [results[position] for position in positions]

    def _write_isolating(
        self, positions: list[int], prepared: PreparedBatch, results: dict[int, Result]
    ) -> None:
        """Fill `results` at every one of `positions`, or raise StoreUnavailable."""
        try:
            outcomes = self._write_once(prepared)
        except psycopg.Error as exc:
            kind = _failure_kind(exc)
            if kind is None:
                # A connection that failed this way (the server restarted, a timeout) may not
                # know it is dead: the next attempt starts from a new one.
                self.close()
                raise StoreUnavailable(f"database unavailable: {_describe(exc)}") from exc
            if prepared.relies_on_cache:
                # A reference row may have been deleted by hand: the failure dropped the cache,
                # so this attempt creates every name the batch uses.
                self._write_isolating(positions, self.prepare(prepared.reports), results)
                return
            if len(positions) == 1:
                results[positions[0]] = kind(_describe(exc))
                return
            middle = len(positions) // 2
            for start, stop in ((0, middle), (middle, len(positions))):
                part = self.prepare(prepared.reports[start:stop])
                self._write_isolating(positions[start:stop], part, results)
            return
        for position, outcome in zip(positions, outcomes, strict=True):
            results[position] = outcome

    def _write_once(self, prepared: PreparedBatch) -> list[Outcome]:
        outcomes: list[Outcome] = [Outcome.SUPERSEDED] * len(prepared.reports)
        if not prepared.upserts:
            return outcomes
        statements = [
            *((_ENTITY_SQL[entity.table], entity.rows) for entity in prepared.entities),
            *((upsert.sql, upsert.rows) for upsert in prepared.upserts),
        ]
        with self._session() as conn:
            try:
                if len(statements) == 1:
                    # One statement is a transaction of its own: no BEGIN and COMMIT to send
                    # and wait for. Most batches are one upsert once the names are known.
                    ((sql, rows),) = statements
                    results = [conn.execute(sql, [rows]).fetchall()]
                else:
                    with conn.pipeline(), conn.transaction():
                        cursors = [conn.execute(sql, [rows]) for sql, rows in statements]
                    results = [cursor.fetchall() for cursor in cursors[len(prepared.entities) :]]
            except psycopg.Error:
                # A reference row may have been deleted behind the cache's back: forget it all.
                self._known.clear()
                if conn.broken:
                    self.close()
                raise
            self._known.update((e.table, key) for e in prepared.entities for key in e.keys)
            for upsert, found in zip(prepared.upserts, results, strict=True):
                for position, created, changed, same in found:
                    outcomes[upsert.group[position - 1].position] = _outcome(created, changed, same)
        return outcomes

    def _session(self) -> _Session:
        return _Session(self)

    def connection(self) -> psycopg.Connection[Any]:
        """The open connection, connecting (or reconnecting) first when needed."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = psycopg.connect(
                self.dsn,
                # Each batch is one transaction: a single statement, or a transaction block.
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name="matchops-worker",
                options=f"-c statement_timeout={int(self.statement_timeout * 1000)}",
            )
        return self._conn


class _Session:
    """The store's connection for one operation; drops it when the connection broke."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> psycopg.Connection[Any]:
        try:
            return self.store.connection()
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to the database: {_describe(exc)}") from exc

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        conn = self.store._conn
        if exc is not None and conn is not None and (conn.broken or conn.closed):
            self.store.close()


def _outcome(created: bool | None, changed: bool | None, same: bool | None) -> Outcome:
    if created is None:  # skipped by the upsert: identical, or older than what is stored
        return Outcome.UNCHANGED if same is not False else Outcome.STALE
    if created:
        return Outcome.CREATED
    # Written with the stored data: only the time of the latest report moved.
    return Outcome.UPDATED if changed else Outcome.UNCHANGED


def _failure_kind(exc: psycopg.Error) -> type[RowRejected | RowDeferred] | None:
    """What a failure means for the reports of the batch; None: the database is unavailable."""
    state = (exc.sqlstate or "")[:2]
    if state in DATA_FAULT_CLASSES:
        return RowRejected
    if state in CLASH_CLASSES:
        return RowDeferred
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    state = getattr(exc, "sqlstate", None)
    prefix = f"{type(exc).__name__}" + (f" [{state}]" if state else "")
    return f"{prefix}: {text[0] if text else 'no details'}"


# SQL: every statement below is built once, at import, from constant names; values are
# always passed as parameters.

EntityTable = Literal["seasons", "age_groups", "divisions", "teams"]

_ENTITY_SQL: Final[dict[EntityTable, bytes]] = {
    table: (
        f"INSERT INTO {table} (name_key, name) "  # noqa: S608 - constant table names
        "SELECT e->>0, e->>1 FROM json_array_elements(%s::json) AS e ORDER BY 1 "
        "ON CONFLICT (name_key) DO NOTHING"
    ).encode()
    for table in ("seasons", "age_groups", "divisions", "teams")
}


def _entities(winners: Sequence[Collapsed]) -> Iterator[tuple[EntityTable, dict[str, str]]]:
    """Per reference table, the names a batch uses: key -> spelling first seen."""
    reports = [winner.report for winner in winners]
    spellings: dict[EntityTable, Iterable[str | None]] = {
        "seasons": (r.season for r in reports),
        "age_groups": (r.age_group for r in reports),
        "divisions": (r.division for r in reports),
        "teams": (name for r in reports for name in (r.home_team, r.away_team)),
    }
    for table, names in spellings.items():
        keys: dict[str, str] = {}
        # A batch names few distinct entities: normalise each spelling once.
        for name in dict.fromkeys(names):
            if name:
                keys.setdefault(name_key(name), name)
        if keys:
            yield table, keys


# Incoming columns of the batch's JSON parameter (one array per row, fields in this order) and
# their SQL types.
_INPUT: Final = (
    ("ord", "integer"),
    ("external_match_id", "text"),
    ("season_key", "text"),
    ("age_group_key", "text"),
    ("division_key", "text"),
    ("home_key", "text"),
    ("away_key", "text"),
    ("match_date", "date"),
    ("kickoff", "time"),
    ("match_type", "text"),
    ("location", "text"),
    ("notes", "text"),
    ("home_score", "integer"),
    ("away_score", "integer"),
    ("status", "text"),
    ("reported_at", "timestamptz"),
)


def _row(position: int, r: MatchReport) -> list[object]:
    """One report as an array of the batch's JSON parameter (fields in the order of _INPUT)."""
    return [
        position,
        r.external_match_id,
        name_key(r.season),
        name_key(r.age_group),
        name_key(r.division) if r.division else None,
        name_key(r.home_team),
        name_key(r.away_team),
        r.match_date,
        r.kickoff,
        r.match_type,
        r.location,
        r.notes,
        r.home_score,
        r.away_score,
        r.match_status,
        r.reported_at,
    ]


def _rows(group: Sequence[Collapsed]) -> str:
    """The batch as one JSON array of row arrays: one parameter, however many reports.

    Adapting one JSON text is far cheaper, client and server side, than fifteen arrays; read
    by position from jsonb, it is cheaper for the server than objects read by key.
    """
    return orjson.dumps([_row(n, w.report) for n, w in enumerate(group, start=1)]).decode()


# Stored columns a report describes; optional descriptive ones keep their stored value when a
# report leaves them out.
_DATA: Final = (
    "season_id",
    "age_group_id",
    "division_id",
    "home_team_id",
    "away_team_id",
    "match_date",
    "kickoff",
    "match_type",
    "location",
    "notes",
    "home_score",
    "away_score",
    "status",
)
_KEEP_WHEN_ABSENT: Final = frozenset({"division_id", "kickoff", "location", "notes"})
_NATURAL_KEY: Final = ("season_id", "age_group_id", "home_team_id", "away_team_id", "match_date")


def _merged(incoming: str, stored: str) -> str:
    return ", ".join(
        f"COALESCE({incoming}.{c}, {stored}.{c})" if c in _KEEP_WHEN_ABSENT else f"{incoming}.{c}"
        for c in _DATA
    )


def _rank(alias: str) -> str:
    cases = " ".join(f"WHEN '{status.value}' THEN {rank}" for status, rank in STATUS_RANK.items())
    return f"(CASE {alias}.status {cases} END)"


def _not_older(incoming: str, stored: str) -> str:
    # The rule of batch.supersedes, in SQL: report times when both differ, else status order.
    return (
        f"(CASE WHEN {incoming}.reported_at IS NOT NULL AND {stored}.reported_at IS NOT NULL "
        f"AND {incoming}.reported_at <> {stored}.reported_at "
        f"THEN {incoming}.reported_at > {stored}.reported_at "
        f"ELSE {_rank(incoming)} >= {_rank(stored)} END)"
    )


def _upsert_sql(kind: Literal["external", "natural"]) -> bytes:
    if kind == "external":
        target = "(external_match_id)"
        same_key = "{a}.external_match_id = {b}.external_match_id"
    else:
        target = f"({', '.join(_NATURAL_KEY)}) WHERE external_match_id IS NULL"
        same_key = " AND ".join(f"{{a}}.{c} = {{b}}.{c}" for c in _NATURAL_KEY)
        same_key = "{a}.external_match_id IS NULL AND {b}.external_match_id IS NULL AND " + (
            same_key
        )
    fields = ", ".join(
        f"(x->>{position})::{type_} AS {name}" for position, (name, type_) in enumerate(_INPUT)
    )
    columns = ("external_match_id", *_DATA, "reported_at")
    stored = ", ".join(f"m.{c}" for c in _DATA)
    changed = f"({stored}) IS DISTINCT FROM ({_merged('excluded', 'm')})"
    # A report with the stored data but a later report time is written too (its time only):
    # otherwise an older report arriving after it would find the earlier time and win.
    later = (
        "(excluded.reported_at IS NOT NULL "
        "AND (m.reported_at IS NULL OR excluded.reported_at > m.reported_at))"
    )
    assignments = ", ".join(
        [
            *(f"{c} = COALESCE(excluded.{c}, m.{c})" for c in _DATA if c in _KEEP_WHEN_ABSENT),
            *(f"{c} = excluded.{c}" for c in _DATA if c not in _KEEP_WHEN_ABSENT),
            "reported_at = GREATEST(excluded.reported_at, m.reported_at)",
            # updated_at is the time of the last change of the data, not of the report time.
            f"updated_at = CASE WHEN {changed} THEN now() ELSE m.updated_at END",
        ]
    )
    current = ", ".join(f"cur.{c}" for c in _DATA)
    sql = f"""
WITH r AS (
    SELECT i.ord, i.external_match_id, s.id AS season_id, a.id AS age_group_id,
           d.id AS division_id, h.id AS home_team_id, w.id AS away_team_id,
           i.match_date, i.kickoff, i.match_type, i.location, i.notes,
           i.home_score, i.away_score, i.status, i.reported_at
    FROM (SELECT {fields} FROM jsonb_array_elements(%s::jsonb) AS x) AS i
    LEFT JOIN seasons s ON s.name_key = i.season_key
    LEFT JOIN age_groups a ON a.name_key = i.age_group_key
    LEFT JOIN divisions d ON d.name_key = i.division_key
    LEFT JOIN teams h ON h.name_key = i.home_key
    LEFT JOIN teams w ON w.name_key = i.away_key
),
up AS (
    INSERT INTO matches AS m ({", ".join(columns)})
    SELECT {", ".join(columns)} FROM r ORDER BY ord
    ON CONFLICT {target} DO UPDATE SET {assignments}
    WHERE {_not_older("excluded", "m")} AND ({changed} OR {later})
    RETURNING m.external_match_id, {", ".join(f"m.{c}" for c in _NATURAL_KEY)},
              (m.xmax = 0) AS created, m.updated_at = now() AS changed
)
SELECT r.ord, up.created, up.changed, skipped.same
FROM r
LEFT JOIN up ON {same_key.format(a="up", b="r")}
-- Only rows the upsert skipped are looked up again, to tell unchanged from stale: the
-- `up.created IS NULL` gate keeps the index scan from running for the others.
LEFT JOIN LATERAL (
    SELECT ({current}) IS NOT DISTINCT FROM ({_merged("r", "cur")}) AS same
    FROM matches cur
    WHERE up.created IS NULL AND {same_key.format(a="cur", b="r")}
    OFFSET 0  -- keeps the planner from flattening the subquery (and dropping the gate)
) AS skipped ON true
ORDER BY r.ord
"""  # noqa: S608 - built from constants only
    return sql.encode()


_UPSERT_SQL: Final = {kind: _upsert_sql(kind) for kind in ("external", "natural")}
