"""The message contract: one match per message, as plain JSON or as a Celery protocol-2 task.

`parse_message` turns any delivery (body bytes, content type and encoding, headers) into either
a valid `MatchReport` or a `Rejection` whose reason code goes into the dead-letter headers; it
never raises. `message_json_schema` is the published JSON Schema of the wire format (both
namings), kept in `workers/schema/match-message.schema.json`.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Annotated, Any, Final

import orjson
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    PlainValidator,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import core_schema

SCHEMA_ID = "https://matchops.dev/schemas/match-message.schema.json"
# The task names the legacy Celery producers send; their first positional argument is the match.
CELERY_TASKS: Final = (
    "celery_tasks.match_tasks.process_match_data",
    "missing_table.tasks.process_match_data",
)
MAX_BODY_BYTES: Final = 256 * 1024
MAX_NAME_LENGTH: Final = 200
MAX_TEXT_LENGTH: Final = 2000
MAX_SCORE: Final = 999
# The scraper's newer field names, mapped to the contract's (the seed's MatchData) names.
ALIASES: Final = {
    "date": "match_date",
    "score_home": "home_score",
    "score_away": "away_score",
    "status": "match_status",
    "match_id": "external_match_id",
}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ALIAS_NAMES = frozenset(ALIASES)
_JSON_TYPES = {"application/json", "text/json", "application/x-json"}


class Reason(StrEnum):
    """Why a message goes to the dead-letter queue (header `x-matchops-reason`)."""

    INVALID_JSON = "invalid-json"
    INVALID_ENCODING = "invalid-encoding"
    UNSUPPORTED_CONTENT = "unsupported-content-type"
    TOO_LARGE = "too-large"
    CONTRACT = "contract"
    UNKNOWN_TASK = "unknown-task"
    CELERY_ENVELOPE = "celery-envelope"
    RETRIES_EXHAUSTED = "retries-exhausted"
    STORE_REJECTED = "store-rejected"


class MatchStatus(StrEnum):
    SCHEDULED = "scheduled"
    COMPLETED = "completed"
    POSTPONED = "postponed"
    CANCELLED = "cancelled"


# Without report times, a report never moves a match back along this order (a late "scheduled"
# report cannot undo a result); with report times on both sides, the later report wins.
STATUS_RANK: Final = {
    MatchStatus.SCHEDULED: 0,
    MatchStatus.POSTPONED: 1,
    MatchStatus.CANCELLED: 2,
    MatchStatus.COMPLETED: 3,
}


# PostgreSQL cannot store a NUL character in text (JSON allows it); pydantic's core checks this
# pattern on every text field, and refuses lone surrogates itself.
_NO_NUL: Final = "^[^\\x00]*$"
_NUL_ERROR: Final = "must not contain NUL characters"


def _external_id(value: object) -> object:
    # Scrapers send numeric match ids; they are identifiers, kept as text.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _match_date(value: object) -> date:
    """YYYY-MM-DD as a date; a full ISO datetime as such, split into date and kickoff later."""
    if not isinstance(value, str):
        raise ValueError("match_date must be a string: YYYY-MM-DD or an ISO datetime")
    text = value.strip()
    if _DATE.fullmatch(text):
        return date.fromisoformat(text)
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"match_date {value!r} is neither YYYY-MM-DD nor an ISO datetime") from exc


Name = Annotated[
    str,
    StringConstraints(
        strict=True,
        strip_whitespace=True,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=_NO_NUL,
    ),
]
Text = Annotated[
    str,
    StringConstraints(
        strict=True, strip_whitespace=True, max_length=MAX_TEXT_LENGTH, pattern=_NO_NUL
    ),
]
ExternalId = Annotated[str, BeforeValidator(_external_id), Name]
Score = Annotated[int, Field(strict=True, ge=0, le=MAX_SCORE)]


@functools.lru_cache(maxsize=65536)
def name_key(name: str) -> str:
    """The identity of a name: Unicode-normalised, case-folded, inner spacing collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def _aliases_of(name: str) -> list[str]:
    return [alias for alias, canonical in ALIASES.items() if canonical == name]


def _named(name: str) -> AliasChoices:
    """The field's validation names: the contract's, then the scraper's newer one."""
    return AliasChoices(name, *_aliases_of(name))


class MatchReport(BaseModel):
    """One report of one match, validated and normalised (the contract's names).

    Validation runs in pydantic's core for all but the checks across fields, which one
    Python validator makes after it: a worker validates every message it receives.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    home_team: Name
    away_team: Name
    # A full datetime validates as such (datetime is a date) and is split into date and kickoff.
    match_date: Annotated[
        date,
        PlainValidator(_match_date),
        WithJsonSchema(
            {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}.*)?$"}
        ),
    ] = Field(
        validation_alias=_named("match_date"),
        description="YYYY-MM-DD; a full ISO datetime is accepted, its time is the kickoff",
    )
    season: Name
    age_group: Name
    match_type: Name
    division: Text | None = None
    location: Text | None = None
    notes: Text | None = None
    external_match_id: Annotated[
        ExternalId | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH},
                    {"type": "integer"},
                    {"type": "null"},
                ]
            }
        ),
    ] = Field(
        default=None,
        validation_alias=_named("external_match_id"),
        description="the source's id of the match; the match's identity",
    )
    home_score: Score | None = Field(default=None, validation_alias=_named("home_score"))
    away_score: Score | None = Field(default=None, validation_alias=_named("away_score"))
    # Absent or null until the validator below derives it from the scores.
    match_status: Annotated[
        MatchStatus,
        GetPydanticSchema(lambda source, handler: core_schema.nullable_schema(handler(source))),
        WithJsonSchema({"enum": [*(status.value for status in MatchStatus), None]}),
    ] = Field(
        default=None,  # type: ignore[assignment]
        validation_alias=_named("match_status"),
        description="when absent: completed if both scores are given, else scheduled",
    )
    kickoff: time | None = Field(default=None, description="kickoff time, HH:MM[:SS]")
    reported_at: datetime | None = Field(
        default=None,
        description=(
            "when the producer observed this state (ISO datetime, UTC when it has no offset); "
            "the later of two reports of a match wins"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _one_value_per_field(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not _ALIAS_NAMES.isdisjoint(data):
            for alias, name in ALIASES.items():
                if alias in data and name in data and data[alias] != data[name]:
                    raise ValueError(
                        f"both {name!r} and {alias!r} are given, with different values"
                    )
        return data

    @model_validator(mode="after")
    def _complete(self) -> MatchReport:
        # The model is frozen for its users; completing it belongs to its validation.
        if isinstance(self.match_date, datetime):
            start = self.match_date.time()
            if self.kickoff is not None and self.kickoff != start:
                raise ValueError(
                    f"kickoff {self.kickoff.isoformat()!r} differs from the time in match_date "
                    f"{self.match_date.isoformat()!r}"
                )
            object.__setattr__(self, "match_date", self.match_date.date())
            object.__setattr__(self, "kickoff", start)
        if self.match_status is None:
            scored = self.home_score is not None and self.away_score is not None
            status = MatchStatus.COMPLETED if scored else MatchStatus.SCHEDULED
            object.__setattr__(self, "match_status", status)
        if self.reported_at is not None and self.reported_at.tzinfo is None:
            object.__setattr__(self, "reported_at", self.reported_at.replace(tzinfo=UTC))
        # pydantic trims fewer characters than a name's identity ignores (the control
        # characters \x1c-\x1f, for instance): a name left with no identity is empty.
        home, away = name_key(self.home_team), name_key(self.away_team)
        keys = {
            "home_team": home,
            "away_team": away,
            "season": name_key(self.season),
            "age_group": name_key(self.age_group),
        }
        for field, key in keys.items():
            if not key:
                raise ValueError(f"{field} is nothing but spacing: {getattr(self, field)!r}")
        if self.division and not name_key(self.division):
            # Like a division of spaces only: no division.
            object.__setattr__(self, "division", "")
        if home == away:
            raise ValueError(f"home team and away team are the same team ({self.home_team!r})")
        if (self.home_score is None) != (self.away_score is None):
            raise ValueError("home_score and away_score must be given together")
        if self.match_status == MatchStatus.COMPLETED and self.home_score is None:
            raise ValueError("a completed match needs both scores")
        return self


@dataclass(frozen=True)
class Rejection:
    """Why a message cannot be stored: a reason code and a text a person can act on."""

    reason: Reason
    error: str


class CeleryEnvelope(BaseModel):
    """The body of a Celery protocol-2 task message: `[args, kwargs, embed]`."""

    model_config = ConfigDict(frozen=True)

    task_args: list[Any]
    task_kwargs: dict[str, Any]
    embed: dict[str, Any] | None = None

    def match(self) -> Any:
        """The match payload: the first positional argument (or the `match_data` keyword)."""
        if self.task_args:
            return self.task_args[0]
        if "match_data" in self.task_kwargs:
            return self.task_kwargs["match_data"]
        raise ValueError("the task has no positional argument and no 'match_data' keyword")


def parse_message(
    body: bytes,
    content_type: str | None = None,
    content_encoding: str | None = None,
    headers: Mapping[str, Any] | None = None,
    timestamp: int | None = None,
) -> MatchReport | Rejection:
    """Validate one delivery; `timestamp` (AMQP property, seconds) is the report time fallback."""
    try:
        return _parse(body, content_type, content_encoding, headers or {}, timestamp)
    except Exception as exc:
        return Rejection(Reason.CONTRACT, f"unreadable message: {type(exc).__name__}: {exc}")


def _parse(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[str, Any],
    timestamp: int | None,
) -> MatchReport | Rejection:
    if len(body) > MAX_BODY_BYTES:
        return Rejection(
            Reason.TOO_LARGE, f"message of {len(body)} bytes exceeds {MAX_BODY_BYTES} bytes"
        )
    if content_type and content_type.split(";")[0].strip().lower() not in _JSON_TYPES:
        return Rejection(
            Reason.UNSUPPORTED_CONTENT,
            f"content type {content_type!r} is not JSON (Celery: use the json serializer)",
        )
    if content_encoding and content_encoding.strip().lower() not in ("utf-8", "utf8"):
        return Rejection(
            Reason.UNSUPPORTED_CONTENT, f"content encoding {content_encoding!r} is not utf-8"
        )
    if headers.get("compression"):
        return Rejection(
            Reason.UNSUPPORTED_CONTENT,
            f"compressed messages ({headers['compression']}) are refused",
        )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as decode_error:
            return Rejection(Reason.INVALID_ENCODING, f"body is not UTF-8: {decode_error}")
        return Rejection(Reason.INVALID_JSON, f"body is not JSON: {exc}")
    task = headers.get("task")
    if task is not None:
        if task not in CELERY_TASKS:
            return Rejection(
                Reason.UNKNOWN_TASK,
                f"Celery task {task!r} is not one of {', '.join(CELERY_TASKS)}",
            )
        try:
            document = _celery_body(document).match()
        except (ValidationError, ValueError) as exc:
            return Rejection(Reason.CELERY_ENVELOPE, f"not a Celery protocol-2 body: {exc}")
    if not isinstance(document, dict):
        return Rejection(
            Reason.CONTRACT, f"a match message is a JSON object, got {type(document).__name__}"
        )
    if timestamp is not None and document.get("reported_at") is None:
        document = {**document, "reported_at": _from_timestamp(timestamp)}
    try:
        return MatchReport.model_validate(document)
    except ValidationError as exc:
        return Rejection(Reason.CONTRACT, describe(exc))


def _celery_body(document: Any) -> CeleryEnvelope:
    if not isinstance(document, list) or len(document) != 3:
        raise ValueError("expected a JSON array [args, kwargs, embed]")
    task_args, task_kwargs, embed = document
    return CeleryEnvelope(task_args=task_args, task_kwargs=task_kwargs, embed=embed)


def _from_timestamp(timestamp: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(timestamp, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def describe(error: ValidationError) -> str:
    """A validation error as one line: `field: problem; field: problem`."""
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "message"
        nul = item.get("ctx", {}).get("pattern") == _NO_NUL
        problem = _NUL_ERROR if nul else item["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {problem}")
    return "; ".join(problems)


@dataclass(frozen=True)
class CeleryMessage:
    """A Celery protocol-2 task message ready to publish."""

    body: bytes
    headers: dict[str, Any]
    correlation_id: str
    content_type: str = "application/json"
    content_encoding: str = "utf-8"


def celery_message(
    match: Mapping[str, Any], task: str = CELERY_TASKS[0], task_id: str | None = None
) -> CeleryMessage:
    """Wrap a match as the legacy producers do (`send_task(task, args=[match])`)."""
    task_id = task_id or str(uuid.uuid4())
    args = [dict(match)]
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr(args)[:1024],
        "kwargsrepr": "{}",
        "origin": "matchops",
        "ignore_result": False,
    }
    body = orjson.dumps(
        [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    return CeleryMessage(body=body, headers=headers, correlation_id=task_id)


def message_json_schema() -> dict[str, Any]:
    """The JSON Schema of a match message on the wire: the model's, plus the newer names."""
    schema = MatchReport.model_json_schema(mode="validation")
    properties: dict[str, Any] = schema["properties"]
    for alias, name in ALIASES.items():
        properties[alias] = {**properties[name], "description": f"newer name of {name}"}
    # A required field may come under either of its names.
    schema["allOf"] = [
        {"anyOf": [{"required": [name]}, *({"required": [a]} for a in _aliases_of(name))]}
        for name in schema.pop("required")
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Match message",
        "description": (
            "One match, as published to the matchops queue: a plain JSON body, or the first "
            "argument of a Celery protocol-2 task. Fields use the contract's names or the "
            "newer ones (never both with different values). The worker also checks what a "
            "schema cannot say: home and away teams differ (case and spacing ignored), both "
            "scores or neither, and a completed match has both scores."
        ),
        **{key: value for key, value in schema.items() if key not in ("title", "description")},
    }
