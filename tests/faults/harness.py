"""Running fault scenarios: publish a workload, drive real workers, account for every message.

`WorkerPool` runs real `matchops-worker` processes and can SIGKILL a consuming one (noting
whether it was at work) and replace it.
`Progress` samples how many messages the live workers have settled, to time recoveries.
`account` compares what PostgreSQL and the dead-letter queue hold with what was published and
names every message that is missing, duplicated or in the wrong place.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import psycopg
from matchops_devenv.broker_tools import Message, Vhost, publish_in_transactions
from matchops_devenv.outcome import stored_rows
from matchops_devenv.procs import ServiceError
from matchops_devenv.season import Identity, MatchState
from matchops_devenv.worker import WorkerProcess
from matchops_worker.deadletter import ERROR_HEADER, REASON_HEADER, REDELIVERED_HEADER
from matchops_worker.durations import format_duration
from matchops_worker.topology import Topology, build_topology, declare

from .report import Figures
from .workload import Outgoing, Workload

QUEUE = "matches"
SETTLED = ("created", "updated", "unchanged", "stale", "superseded", "dead_lettered")


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ServiceError):
            if check():
                return
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout:.0f}s")


def wait_for_backlog(vhost: Vhost, queue: str, at_most: int, timeout: float = 300) -> None:
    """Wait until at most `at_most` messages are ready in a queue."""
    wait_until(lambda: vhost.depth(queue) <= at_most, timeout, f"{queue} down to {at_most}")


def topology(retry_delays: Iterable[str] = ("10s", "1m", "5m")) -> Topology:
    return build_topology(QUEUE, retry_delays=tuple(retry_delays))


def fill(vhost: Vhost, messages: Sequence[Outgoing], layout: Topology) -> None:
    """Declare the topology, publish persistent messages to a queue nobody consumes yet, and
    check that it holds them all (they go in transactions, so a shortfall is the broker's)."""
    with vhost.channel() as channel:
        declare(channel, layout)
        waiting = channel.queue_declare(layout.queue, passive=True).method.message_count
        publish_in_transactions(
            channel,
            layout.exchange,
            layout.routing_keys[0],
            ((message.body, message.properties()) for message in messages),
        )
    expected = waiting + len(messages)
    depth = vhost.wait_for_depth(layout.queue, expected, timeout=120)
    assert depth == expected, f"the queue holds {depth} messages, {expected} were published"


def publish(vhost: Vhost, messages: Iterable[Outgoing], layout: Topology) -> None:
    """Publish persistent messages with a publisher confirm each (workers may be consuming)."""
    with vhost.channel() as channel:
        channel.confirm_delivery()
        for message in messages:
            channel.basic_publish(
                layout.exchange,
                layout.routing_keys[0],
                message.body,
                message.properties(),
                mandatory=True,
            )


# --- workers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """One SIGKILL of a consuming worker, and whether it cut work short."""

    # Messages the victim settled in the moment (`BUSY_WINDOW`) before the kill.
    settled_before: float
    # Messages ready in the queue at the kill.
    waiting: int

    @property
    def mid_work(self) -> bool:
        """The victim was settling messages while more waited. The broker keeps a consuming
        worker's prefetch window full while messages wait, so it held unacknowledged ones."""
        return self.settled_before > 0 and self.waiting > 0


START_ATTEMPTS = 3
# Long enough for a busy worker to commit a batch or two (a batch takes milliseconds to tens
# of milliseconds).
BUSY_WINDOW = 0.2


def settled(worker: WorkerProcess) -> float:
    """Messages a worker has settled: stored, skipped or dead-lettered."""
    metrics = worker.metrics()
    return sum(
        metrics.get(f'matchops_worker_messages_total{{outcome="{name}"}}', 0.0) for name in SETTLED
    )


@dataclass
class WorkerPool:
    """Real `matchops-worker` processes on one virtual host and database.

    `workers` holds only workers that have consumed: a replacement joins once it consumes, as
    a pod joins its Service once ready.
    """

    state_dir: Path
    amqp_url: str
    dsn: str
    layout: Topology
    settings: Mapping[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    # Seconds from each SIGKILL until its replacement consumed.
    replacements: list[float] = field(default_factory=list)
    _started: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _starting: list[threading.Thread] = field(default_factory=list)
    _failures: list[ServiceError] = field(default_factory=list)

    def start(self, count: int) -> None:
        """Start `count` workers at once and wait until each consumes.

        At once, as a Deployment's pods start: one after the other, the first would drain a
        filled queue alone while the others start, before any fault is injected.
        """
        workers = [self._worker() for _ in range(count)]
        with self._lock:
            self.workers.extend(workers)  # stopped with the pool, even if one fails to start
        with ThreadPoolExecutor(max_workers=count) as starting:
            for started in [starting.submit(worker.start, timeout=120) for worker in workers]:
                started.result()

    def _worker(self) -> WorkerProcess:
        with self._lock:
            number, self._started = self._started, self._started + 1
        return WorkerProcess(
            self.state_dir,
            self.amqp_url,
            self.dsn,
            {
                "MATCHOPS_LOG_LEVEL": "warning",
                "MATCHOPS_QUEUE": self.layout.queue,
                "MATCHOPS_RETRY_DELAYS": ",".join(
                    format_duration(delay) for delay in self.layout.retry_delays
                ),
                **self.settings,
            },
            name=f"worker-{number}",
        )

    def consuming(self) -> list[WorkerProcess]:
        """The workers whose readiness endpoint says they consume now."""
        with self._lock:
            workers = list(self.workers)
        ready = []
        for worker in workers:
            with contextlib.suppress(ServiceError):
                if worker.ready():
                    ready.append(worker)
        return ready

    def kill_one(self, rng: random.Random, vhost: Vhost) -> None:
        """SIGKILL a random consuming worker, noting whether it was at work; a replacement
        starts in the background, as a pod would."""
        wait_until(lambda: bool(self.consuming()), 120, "a consuming worker to kill")
        victim = rng.choice(self.consuming())
        before = settled(victim)
        time.sleep(BUSY_WINDOW)
        now = settled(victim)
        waiting = vhost.depth(self.layout.queue)
        # The kill lands wherever the victim's batch is by now: being filled, written or acked.
        with self._lock:
            self.workers.remove(victim)
        killed = time.monotonic()
        victim.kill()
        self.kills.append(Kill(now - before, waiting))
        thread = threading.Thread(target=self._replace, args=(killed,), daemon=True)
        thread.start()
        self._starting.append(thread)

    def _replace(self, killed: float) -> None:
        # Restarted when it fails to start, as the kubelet restarts a container (a free port
        # picked for its metrics can be taken by another program before the worker binds it).
        for attempt in range(START_ATTEMPTS):
            worker = self._worker()
            try:
                worker.start(timeout=120)
            except ServiceError as exc:
                worker.stop(timeout=5)
                if attempt == START_ATTEMPTS - 1:
                    with self._lock:
                        self._failures.append(exc)
                continue
            with self._lock:
                self.workers.append(worker)
            self.replacements.append(time.monotonic() - killed)
            return

    def handled(self) -> float:
        """Messages the live workers have settled (stored, skipped or dead-lettered)."""
        total = 0.0
        with self._lock:
            workers = list(self.workers)
        for worker in workers:
            with contextlib.suppress(ServiceError):
                total += settled(worker)
        return total

    def wait_handled(self, count: int, timeout: float = 60) -> None:
        wait_until(lambda: self.handled() >= count, timeout, f"{count} messages handled")

    def counter(self, name: str, **labels: str) -> float:
        total = 0.0
        with self._lock:
            workers = list(self.workers)
        for worker in workers:
            with contextlib.suppress(ServiceError):
                total += worker.counter(name, **labels)
        return total

    def logs(self) -> str:
        return "\n".join(f"--- {w.service.name}\n{w.log}" for w in self.workers)

    def stop(self) -> list[int | None]:
        """SIGTERM every worker (each finishes its batch) once every replacement has started or
        given up; their exit codes. Then fail if a replacement could not start."""
        for thread in self._starting:
            thread.join()
        self._starting = []
        codes = [worker.stop(timeout=60) for worker in self.workers]
        self.workers = []
        failures, self._failures = self._failures, []
        if failures:
            raise failures[0]
        return codes


# --- progress and recovery -----------------------------------------------------------------


@dataclass
class Progress:
    """Samples the pool's settled-message count in the background, to measure throughput."""

    pool: WorkerPool
    interval: float = 0.2
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.monotonic(), self.pool.handled()))

    def rate(self, start: float, end: float) -> float:
        """Messages per second settled between two moments (monotonic clock)."""
        inside = [(t, n) for t, n in self.samples if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def steady_rate(self, total: int, since: float, high: float = 0.9) -> float:
        """Messages per second from `since` (every worker consuming) until `high` of `total`
        is settled: the workers' pace together, before the last partial batches wait out
        their batch time."""
        end = next(t for t, n in self.samples if n >= total * high)
        return self.rate(since, end)

    def recovered_after(self, moment: float, intervals: int = 5) -> float | None:
        """Seconds after `moment` until settling ran at a steady rate again: the settled count
        grew in each of `intervals` sampling intervals in a row. None if it never did."""
        after = [(t, n) for t, n in self.samples if t >= moment]
        streak, began = 0, moment
        for (start, earlier), (_, later) in pairwise(after):
            streak = streak + 1 if later > earlier else 0
            if streak == 1:
                began = start
            if streak == intervals:
                return began - moment
        return None


# --- accounting ----------------------------------------------------------------------------


def reference_counts(dsn: str) -> dict[str, tuple[int, int]]:
    """Per reference table: rows and distinct names (equal unless a name was created twice)."""
    counts = {}
    with psycopg.connect(dsn) as conn:
        for table in ("teams", "seasons", "age_groups", "divisions"):
            row = conn.execute(
                f"SELECT count(*), count(DISTINCT lower(name)) FROM {table}"  # noqa: S608
            ).fetchone()
            assert row is not None
            counts[table] = (int(row[0]), int(row[1]))
    return counts


@dataclass(frozen=True)
class Tally:
    """Where every published message ended up."""

    messages_in: int
    stored: int  # valid messages whose match holds its final state
    dead_lettered: int  # distinct messages in the dead-letter queue
    lost: int  # valid messages whose match is missing or stale, poison not dead-lettered
    duplicated: int  # rows beyond one per match, and rows no message asked for
    dead_letters_repeated: int  # extra copies of a message in the dead-letter queue
    # Extra copies not marked as made from a redelivery: one message copied twice from one
    # delivery, or published twice.
    unmarked_repeats: int
    valid_dead_lettered: list[str]
    wrong_reasons: dict[str, str]
    missing_poison: list[str]
    wrong_matches: dict[Identity, tuple[MatchState | None, MatchState]]
    reasons: dict[str, int]  # dead letters by reason
    unexplained: list[str]  # dead letters without the error text a person reads

    def problems(self) -> str:
        """A readable list of what is wrong, for assertion messages."""
        matches = dict(list(self.wrong_matches.items())[:5])
        reasons = dict(list(self.wrong_reasons.items())[:5])
        return (
            f"lost {self.lost}, duplicated {self.duplicated}, dead letters repeated "
            f"{self.dead_letters_repeated} ({self.unmarked_repeats} unmarked), valid dead-lettered "
            f"{self.valid_dead_lettered[:5]}, wrong reasons {reasons}, poison missing "
            f"{self.missing_poison[:5]}, wrong matches (stored, expected) {matches}"
        )

    def figures(self, scenario: str, recovery: str, notes: str) -> Figures:
        """The fault report's row for a scenario that ended with this tally."""
        return Figures(
            scenario=scenario,
            messages_in=self.messages_in,
            stored=self.stored,
            dead_lettered=self.dead_lettered,
            lost=self.lost,
            duplicated=self.duplicated,
            dead_letters_repeated=self.dead_letters_repeated,
            recovery=recovery,
            notes=notes,
        )


def account(workload: Workload, dsn: str, dead: list[Message]) -> Tally:
    """Compare the database and the dead-letter queue with what was published."""
    stored = stored_rows(dsn)
    by_identity: dict[Identity, MatchState] = {}
    for key, match in stored:
        by_identity.setdefault(key, match)
    duplicated = len(stored) - len(by_identity)
    duplicated += sum(1 for key in by_identity if key not in workload.final)
    wrong = {
        key: (by_identity.get(key), expected)
        for key, expected in workload.final.items()
        if by_identity.get(key) != expected
    }
    lost_valid = sum(1 for key in workload.reports.values() if key in wrong)

    seen = Counter(message.properties.message_id for message in dead)
    first_copies = Counter(
        message.properties.message_id
        for message in dead
        if message.headers.get(REDELIVERED_HEADER) is not True
    )
    wrong_reasons = {
        str(m.properties.message_id): str(m.headers.get(REASON_HEADER))
        for m in dead
        if m.properties.message_id in workload.poison
        and m.headers.get(REASON_HEADER) != workload.poison[m.properties.message_id]
    }
    missing_poison = sorted(set(workload.poison) - set(seen))
    valid_dead = sorted(str(mid) for mid in seen if mid not in workload.poison)
    return Tally(
        messages_in=len(workload.messages),
        stored=len(workload.reports) - lost_valid,
        dead_lettered=len(seen),
        lost=lost_valid + len(missing_poison),
        duplicated=duplicated,
        dead_letters_repeated=sum(count - 1 for count in seen.values()),
        unmarked_repeats=sum(count - 1 for count in first_copies.values()),
        valid_dead_lettered=valid_dead,
        wrong_reasons=wrong_reasons,
        missing_poison=missing_poison,
        wrong_matches=wrong,
        reasons=dict(Counter(str(m.headers.get(REASON_HEADER)) for m in dead)),
        unexplained=[str(m.properties.message_id) for m in dead if not m.headers.get(ERROR_HEADER)],
    )


@dataclass
class Settling:
    """Whether a workload has settled, or stopped moving short of it."""

    workload: Workload
    dsn: str
    vhost: Vhost
    layout: Topology
    quiet: float = 15.0
    _last: tuple[object, ...] = ()
    _since: float = field(default_factory=time.monotonic)

    def done(self) -> bool:
        """Settled: every match in its final state, all poison dead-lettered, nothing waiting.
        Stuck: nothing waiting and nothing changed for `quiet` seconds."""
        depths = {queue.name: self.vhost.depth(queue.name) for queue in self.layout.queues}
        dead = depths.pop(self.layout.dead_letter_queue)
        waiting = sum(depths.values())
        stored = dict(stored_rows(self.dsn))
        if (
            not waiting
            and dead >= len(self.workload.poison)
            and all(stored.get(key) == want for key, want in self.workload.final.items())
        ):
            return True
        now = (dead, waiting, tuple(sorted(stored.items())))
        if now != self._last:
            self._last, self._since = now, time.monotonic()
        return not waiting and time.monotonic() - self._since > self.quiet


def settle(
    workload: Workload,
    dsn: str,
    vhost: Vhost,
    layout: Topology,
    timeout: float = 300,
    quiet: float = 15.0,
) -> None:
    """Wait until the workload has settled, got stuck, or the time is up."""
    settling = Settling(workload, dsn, vhost, layout, quiet)
    with contextlib.suppress(AssertionError):
        wait_until(settling.done, timeout, "settled", 0.5)


def finish(workload: Workload, dsn: str, vhost: Vhost, layout: Topology, pool: WorkerPool) -> Tally:
    """Stop the workers (each finishes its batch) and account for every message."""
    codes = pool.stop()
    assert all(code == 0 for code in codes), f"workers exited with {codes}"
    return account(workload, dsn, vhost.take(layout.dead_letter_queue))


def drain(
    workload: Workload,
    dsn: str,
    vhost: Vhost,
    layout: Topology,
    pool: WorkerPool,
    timeout: float = 300,
) -> Tally:
    """Settle, then stop the workers and account."""
    settle(workload, dsn, vhost, layout, timeout)
    return finish(workload, dsn, vhost, layout, pool)


def iter_thresholds(total: int, count: int, rng: random.Random) -> Iterator[int]:
    """`count` random backlog sizes between 90 % and 10 % of `total`, largest first."""
    points = (rng.randint(total // 10, total * 9 // 10) for _ in range(count))
    yield from sorted(points, reverse=True)
