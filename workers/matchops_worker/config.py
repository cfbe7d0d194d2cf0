"""Settings from MATCHOPS_* environment variables (the names are a contract with the operator).

The worker, its `migrate` command and the `matchops` producer load their settings here and
nowhere else.

An empty variable counts as unset, as Kubernetes manifests often render optional values empty.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from matchops_worker.durations import DurationError, format_duration, parse_duration
from matchops_worker.topology import (
    DEFAULT_RETRY_DELAYS,
    QUEUE_TYPES,
    Topology,
    TopologyError,
    build_topology,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """Settings a command cannot run with; the message lists every problem."""


@dataclass(frozen=True)
class WorkerConfig:
    amqp_url: str
    database_dsn: str
    topology: Topology
    prefetch: int = 200
    batch_size: int = 200
    batch_wait: float = 0.2
    batch_idle: float = 0.01
    statement_timeout: float = 30.0
    metrics_port: int = 9100
    log_level: str = "info"
    declare_topology: bool = False

    @property
    def batch_limit(self) -> int:
        """Most messages in one batch: the batch size, and at most half the prefetch.

        The broker sends no more than the prefetch of unacked messages; a batch of half of it
        leaves room to receive the next batch while one is being written.
        """
        return max(1, min(self.batch_size, self.prefetch // 2))

    def notes(self) -> list[str]:
        """What the settings mean in practice, where that is not what they say."""
        if self.batch_size > self.batch_limit:
            return [
                f"MATCHOPS_BATCH_SIZE is {self.batch_size} but MATCHOPS_PREFETCH is "
                f"{self.prefetch}: batches hold at most {self.batch_limit} messages (half the "
                "prefetch); raise the prefetch to twice the batch size for full batches"
            ]
        return []

    @property
    def logging_level(self) -> int:
        return _logging_level(self.log_level)


@dataclass(frozen=True)
class MigrateConfig:
    """What `matchops-worker migrate` reads."""

    database_dsn: str
    log_level: str = "info"

    @property
    def logging_level(self) -> int:
        return _logging_level(self.log_level)


@dataclass(frozen=True)
class ProducerConfig:
    """What the `matchops` producer reads: the broker, and the pipeline to publish into."""

    amqp_url: str | None
    topology: Topology

    @property
    def routing_key(self) -> str:
        """The key messages are published with."""
        return self.topology.routing_keys[0]


def load_config(env: Mapping[str, str] | None = None) -> WorkerConfig:
    """Read and check every MATCHOPS_* setting; raise ConfigError listing all problems."""
    reader = _Reader(os.environ if env is None else env)
    amqp_url = reader.required("MATCHOPS_AMQP_URL")
    database_dsn = reader.required("MATCHOPS_DATABASE_DSN")
    topology = _topology(reader, reader.items("MATCHOPS_ROUTING_KEYS"))
    prefetch = reader.integer("MATCHOPS_PREFETCH", 200, minimum=1, maximum=65535)
    batch_size = reader.integer("MATCHOPS_BATCH_SIZE", 200, minimum=1, maximum=10000)
    batch_wait = reader.duration("MATCHOPS_BATCH_WAIT", "200ms")
    batch_idle = reader.duration("MATCHOPS_BATCH_IDLE", "10ms")
    # PostgreSQL reads a statement_timeout of 0 as no limit at all.
    statement_timeout = reader.duration("MATCHOPS_STATEMENT_TIMEOUT", "30s", minimum=0.001)
    metrics_port = reader.integer("MATCHOPS_METRICS_PORT", 9100, minimum=0, maximum=65535)
    log_level = _log_level(reader)
    declare_topology = reader.boolean("MATCHOPS_DECLARE_TOPOLOGY", False)
    if reader.problems or topology is None:
        raise reader.error("worker configuration")
    return WorkerConfig(
        amqp_url=amqp_url,
        database_dsn=database_dsn,
        topology=topology,
        prefetch=prefetch,
        batch_size=batch_size,
        batch_wait=batch_wait,
        batch_idle=batch_idle,
        statement_timeout=statement_timeout,
        metrics_port=metrics_port,
        log_level=log_level,
        declare_topology=declare_topology,
    )


def load_migrate_config(env: Mapping[str, str] | None = None) -> MigrateConfig:
    """Read the settings `matchops-worker migrate` uses; raise ConfigError listing all problems."""
    reader = _Reader(os.environ if env is None else env)
    config = MigrateConfig(reader.required("MATCHOPS_DATABASE_DSN"), _log_level(reader))
    if reader.problems:
        raise reader.error("migrate configuration")
    return config


def load_producer_config(env: Mapping[str, str] | None = None) -> ProducerConfig:
    """Read the settings of the `matchops` producer; raise ConfigError listing all problems.

    `MATCHOPS_ROUTING_KEY`, which the operator sets on its scraper CronJob, names the one key
    to publish with; without it, messages go out with the first of `MATCHOPS_ROUTING_KEYS`.
    """
    reader = _Reader(os.environ if env is None else env)
    routing_key = reader.optional("MATCHOPS_ROUTING_KEY")
    keys = [routing_key] if routing_key else reader.items("MATCHOPS_ROUTING_KEYS")
    topology = _topology(reader, keys)
    if reader.problems or topology is None:
        raise reader.error("producer configuration")
    return ProducerConfig(reader.optional("MATCHOPS_AMQP_URL"), topology)


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated list, trimmed, empty ones left out."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _topology(reader: _Reader, routing_keys: list[str] | None) -> Topology | None:
    """The pipeline's topology from its MATCHOPS_* settings; None when they do not make one."""
    queue = reader.text("MATCHOPS_QUEUE", "matches")
    queue_type = reader.choice("MATCHOPS_QUEUE_TYPE", "quorum", QUEUE_TYPES)
    delays = reader.durations("MATCHOPS_RETRY_DELAYS", ",".join(DEFAULT_RETRY_DELAYS))
    try:
        return build_topology(
            queue,
            exchange=reader.optional("MATCHOPS_EXCHANGE"),
            routing_keys=routing_keys,
            queue_type=queue_type,
            retry_delays=delays,
            dead_letter_queue=reader.optional("MATCHOPS_DEAD_LETTER_QUEUE"),
        )
    except TopologyError as exc:
        reader.problems.append(str(exc))
        return None


def _log_level(reader: _Reader) -> str:
    return reader.choice("MATCHOPS_LOG_LEVEL", "info", LOG_LEVELS)


def _logging_level(name: str) -> int:
    return int(getattr(logging, name.upper()))


class _Reader:
    """Reads variables, collecting problems so that one error message names them all."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def error(self, what: str) -> ConfigError:
        return ConfigError(f"invalid {what}: " + "; ".join(self.problems))

    def optional(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def required(self, name: str) -> str:
        value = self.optional(name)
        if value is None:
            self.problems.append(f"{name} is required")
            return ""
        return value

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def items(self, name: str) -> list[str] | None:
        value = self.optional(name)
        if value is None:
            return None
        return comma_list(value) or None

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.optional(name) or default).lower()
        if value not in choices:
            self.problems.append(f"{name}={value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.optional(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.problems.append(f"{name}={value!r} is not a whole number")
            return default
        if not minimum <= number <= maximum:
            self.problems.append(f"{name}={number} is outside {minimum}..{maximum}")
            return default
        return number

    def duration(self, name: str, default: str, minimum: float = 0.0) -> float:
        value = self.optional(name) or default
        try:
            seconds = parse_duration(value)
        except DurationError as exc:
            self.problems.append(f"{name}: {exc}")
            return parse_duration(default)
        if seconds < minimum:
            self.problems.append(f"{name}={value!r} is shorter than {format_duration(minimum)}")
            return parse_duration(default)
        return seconds

    def durations(self, name: str, default: str) -> list[float]:
        value = self.optional(name) or default
        delays: list[float] = []
        for item in value.split(","):
            try:
                delays.append(parse_duration(item))
            except DurationError as exc:
                self.problems.append(f"{name}: {exc}")
        return delays

    def boolean(self, name: str, default: bool) -> bool:
        value = self.optional(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={value!r} is not true or false")
        return default
