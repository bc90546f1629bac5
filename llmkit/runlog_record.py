"""A run record (one provider call) and the row it is stored as.

`to_row` checks a record's fields (a wrong type or an unknown status is a BadRequest naming it)
and shapes it into a row of COLUMNS that SQLite and JSON readers always accept (see
`runlog_rows`); `version_columns` gives a record's version fields for a version of the index.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from llmkit.db import MAX_SQLITE_INT
from llmkit.errors import BadRequest
from llmkit.runlog_rows import Shaper, format_time, utc_now

STATUSES = ("ok", "error", "cancelled")
# Where a call came from; "judge" is an eval's judge grading an answer of the prompt it is
# logged under: such a row is a call about that version, not of it, so stats() leaves it out.
SOURCES = ("api", "ui", "eval", "cli", "judge")
DEFAULT_FIELD_MAX_BYTES = 1024 * 1024


def new_trace_id() -> str:
    return uuid.uuid4().hex


@dataclass(kw_only=True)
class RunRecord:
    """One provider call. `request` and `response` are JSON-able values (a streamed response is
    the assembled text, a str); they are stored as JSON text and read back as values."""

    trace_id: str = field(default_factory=new_trace_id)
    # The row's integer id: handed out by RunLog.new_id() before the call is answered, or
    # given by the writer if the caller had none.
    id: int | None = None
    prompt_key: str
    version_number: int | None = None
    version_sha: str | None = None
    # A draft (the working tree's uncommitted file) has no number and no sha: it is named by
    # the git blob id of its text, so it never passes for the version it may later become.
    draft: bool = False
    draft_blob: str | None = None
    model: str
    # The model as the prompt, eval case or judge names it (an alias of llmkit.yaml or a model
    # string), where `model` is what it resolved to: LLMKit's `model_name`.
    model_name: str | None = None
    request: Any
    response: Any = None
    status: str = "ok"
    error: str | None = None
    http_status: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    stream: bool = False
    api_key_id: int | None = None
    source: str = "api"
    created_at: str = field(default_factory=utc_now)


FIELDS = tuple(RunRecord.__dataclass_fields__)
# Beside the record's fields, each row says what storing it changed: the fields cut to the
# cap (a JSON list of names) and notes on every other change (a JSON list of sentences).
COLUMNS = (*FIELDS, "truncated", "log_notes")
CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
_INT_FIELDS = (
    "id",
    "version_number",
    "http_status",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "api_key_id",
)
_NUMBER_FIELDS = ("cost", "latency_ms", "ttft_ms")
_TEXT_FIELDS = (
    "trace_id",
    "prompt_key",
    "version_sha",
    "draft_blob",
    "model",
    "model_name",
    "error",
)


class LoggedVersion(Protocol):
    """What the run log needs of a version (the index's Version has it)."""

    number: int | None
    sha: str | None
    blob: str
    draft: bool


def version_columns(version: LoggedVersion) -> dict[str, Any]:
    """The version fields of a record for `version`: its number and sha, or for a draft, the
    draft flag and the blob id of its text."""
    if version.draft:
        return {
            "version_number": None,
            "version_sha": None,
            "draft": True,
            "draft_blob": version.blob,
        }
    return {
        "version_number": version.number,
        "version_sha": version.sha,
        "draft": False,
        "draft_blob": None,
    }


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}... ({len(text)} characters)"


def canonical_time(value: str | datetime, param: str) -> str:
    """An ISO-8601 time (a naive one is UTC) in the stored shape, or BadRequest naming it."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise BadRequest(
                f"{param} is not an ISO-8601 time: {shown(value)}", param=param
            ) from None
    else:
        raise BadRequest(f"{param} is not an ISO-8601 time: {shown(value)}", param=param)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_time(moment.astimezone(UTC))


def _check_record(record: RunRecord) -> None:
    for name in ("trace_id", "prompt_key", "model"):
        value = getattr(record, name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"Run record {name} must be a non-empty string: {shown(value)}")
    if record.status not in STATUSES:
        raise BadRequest(
            f"Unknown run status {shown(record.status)} (expected one of: {', '.join(STATUSES)})"
        )
    if record.source not in SOURCES:
        raise BadRequest(
            f"Unknown run source {shown(record.source)} (expected one of: {', '.join(SOURCES)})"
        )
    for name in _INT_FIELDS:
        value = getattr(record, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise BadRequest(f"Run record {name} must be an integer or None: {shown(value)}")
    if record.id is not None and not 0 < record.id <= MAX_SQLITE_INT:
        raise BadRequest(f"Run record id must be a positive 64-bit integer: {shown(record.id)}")
    for name in _NUMBER_FIELDS:
        value = getattr(record, name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise BadRequest(f"Run record {name} must be a number or None: {shown(value)}")
    for name in ("version_sha", "draft_blob", "model_name", "error"):
        value = getattr(record, name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Run record {name} must be a string or None: {shown(value)}")
    if not isinstance(record.draft, bool):
        raise BadRequest(f"Run record draft must be true or false: {shown(record.draft)}")
    if record.draft and (record.version_number is not None or record.version_sha is not None):
        raise BadRequest(
            "A draft run record has no version number or sha (it is named by its draft_blob):"
            f" got {shown(record.version_number)} and {shown(record.version_sha)}"
        )
    if not record.draft and record.draft_blob is not None:
        raise BadRequest(f"Run record draft_blob is for drafts only: {shown(record.draft_blob)}")


def to_row(record: RunRecord, field_max_bytes: int) -> tuple[Any, ...]:
    """The record as a row in COLUMNS order, in a form SQLite and JSON readers always accept."""
    _check_record(record)
    shaper = Shaper(field_max_bytes)
    values: dict[str, Any] = dict(record.__dict__)
    for name in _TEXT_FIELDS:
        values[name] = shaper.text(name, values[name])
    for name in _INT_FIELDS:
        values[name] = shaper.integer(name, values[name])
    for name in _NUMBER_FIELDS:
        values[name] = shaper.number(name, values[name])
    values["request"] = shaper.json("request", record.request)
    response = record.response
    values["response"] = None if response is None else shaper.json("response", response)
    values["stream"] = 1 if record.stream else 0
    values["draft"] = 1 if record.draft else 0
    created = record.created_at
    if not (isinstance(created, str) and CANONICAL_TIME.match(created)):
        created = canonical_time(created, "created_at")
    values["created_at"] = created
    values["truncated"] = json.dumps(shaper.truncated) if shaper.truncated else None
    values["log_notes"] = json.dumps(shaper.notes, ensure_ascii=False) if shaper.notes else None
    return tuple(values[name] for name in COLUMNS)
