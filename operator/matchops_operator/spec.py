"""The MatchIngestion resource as typed models: every default of the spec lives here.

The CRD (`crds/matchops.dev_matchingestions.yaml`) repeats the same defaults, enums and minimums
so that the API server fills and checks them; a unit test keeps the two in agreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from matchops_worker.config import WorkerConfig
from matchops_worker.durations import parse_duration
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

GROUP = "matchops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MatchIngestion"
PLURAL = "matchingestions"

QueueType = Literal["quorum", "classic"]
DeletionPolicy = Literal["Retain", "Delete"]
LogLevel = Literal["debug", "info", "warning", "error"]

# The worker variables the operator sets from the spec; `workers.env` cannot set them (the
# CRD's rule on workers.env names the same ones).
OPERATOR_WORKER_ENV = frozenset(
    {
        "MATCHOPS_AMQP_URL",
        "MATCHOPS_DATABASE_DSN",
        "MATCHOPS_QUEUE",
        "MATCHOPS_EXCHANGE",
        "MATCHOPS_ROUTING_KEYS",
        "MATCHOPS_QUEUE_TYPE",
        "MATCHOPS_RETRY_DELAYS",
        "MATCHOPS_DEAD_LETTER_QUEUE",
        "MATCHOPS_PREFETCH",
        "MATCHOPS_BATCH_SIZE",
        "MATCHOPS_BATCH_WAIT",
        "MATCHOPS_LOG_LEVEL",
        "MATCHOPS_METRICS_PORT",
        "MATCHOPS_DECLARE_TOPOLOGY",
    }
)


class SpecError(ValueError):
    """A spec the operator cannot work with (the API server's schema normally refuses these)."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        # Fields a newer CRD adds are ignored rather than failing every reconcile.
        extra="ignore",
    )


class SecretKeyRef(_Model):
    """One key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)

    def source(self, namespace: str) -> str:
        """How messages name the key: Secret ingest/rabbitmq key 'url'."""
        return f"Secret {namespace}/{self.name} key {self.key!r}"


class ScraperSpec(_Model):
    """The producer, run as a CronJob."""

    image: str = Field(min_length=1)
    schedule: str = Field(min_length=1)
    time_zone: str = "UTC"
    suspend: bool = False
    args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] = Field(default_factory=dict)
    # A stuck scrape would hold back every later one (one Job at a time): its deadline.
    active_deadline_seconds: int = Field(default=3600, ge=1)


class RetrySpec(_Model):
    """Delayed redelivery after a transient failure."""

    delays: tuple[str, ...] = Field(default=("10s", "1m", "5m"), min_length=1, max_length=10)

    @field_validator("delays")
    @classmethod
    def _durations(cls, delays: tuple[str, ...]) -> tuple[str, ...]:
        for delay in delays:
            parse_duration(delay)
        return delays

    @property
    def delay_seconds(self) -> tuple[float, ...]:
        return tuple(parse_duration(delay) for delay in self.delays)


class BrokerSpec(_Model):
    """Where the pipeline's queues live and how they are shaped."""

    secret_ref: SecretKeyRef
    management_secret_ref: SecretKeyRef | None = None
    exchange: str | None = None
    queue: str | None = None
    routing_keys: tuple[str, ...] | None = None
    queue_type: QueueType = "quorum"
    retry: RetrySpec = Field(default_factory=RetrySpec)
    dead_letter_queue: str | None = None
    deletion_policy: DeletionPolicy = "Retain"


class WorkersSpec(_Model):
    """The consumers, run as a Deployment sized to the backlog."""

    image: str = ""
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=10, ge=0, le=1000)
    target_backlog_per_replica: int = Field(default=500, ge=1)
    target_drain_seconds: int = Field(default=60, ge=1)
    scale_down_delay_seconds: int = Field(default=300, ge=0)
    prefetch: int = Field(default=200, ge=1, le=65535)
    batch_size: int = Field(default=200, ge=1, le=10000)
    batch_wait: str = "200ms"
    log_level: LogLevel = "info"
    env: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] = Field(default_factory=dict)

    @field_validator("batch_wait")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("env")
    @classmethod
    def _not_operator_set(cls, env: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        taken = sorted({str(var.get("name")) for var in env} & OPERATOR_WORKER_ENV)
        if taken:
            raise ValueError(f"sets {', '.join(taken)}, which the operator sets from the spec")
        return env

    @property
    def batch_wait_seconds(self) -> float:
        return parse_duration(self.batch_wait)

    @property
    def statement_timeout_seconds(self) -> float:
        """The workers' statement timeout: MATCHOPS_STATEMENT_TIMEOUT from `env`, else 30s.

        A value from a Secret or ConfigMap cannot be read here: the default counts then.
        """
        for var in self.env:
            if var.get("name") == "MATCHOPS_STATEMENT_TIMEOUT" and var.get("value"):
                try:
                    return parse_duration(str(var["value"]))
                except ValueError:
                    break  # the worker refuses it at start-up, with its own message
        return WorkerConfig.statement_timeout


class DatabaseSpec(_Model):
    """The PostgreSQL database the workers write to."""

    secret_ref: SecretKeyRef


class MatchIngestionSpec(_Model):
    """`spec` of a MatchIngestion."""

    scraper: ScraperSpec | None = None
    broker: BrokerSpec
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    database: DatabaseSpec


def parse_spec(spec: Mapping[str, Any]) -> MatchIngestionSpec:
    """The typed spec; raises SpecError naming each field that is wrong."""
    try:
        parsed = MatchIngestionSpec.model_validate(dict(spec))
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise SpecError(problems) from exc
    if parsed.workers.min_replicas > parsed.workers.max_replicas:
        raise SpecError(
            f"spec.workers.minReplicas ({parsed.workers.min_replicas}) must not exceed "
            f"spec.workers.maxReplicas ({parsed.workers.max_replicas})"
        )
    return parsed
