"""The run log: one row per provider call, written by one background thread in batches.

`log()` shapes the record into a row and queues it: it never waits for SQLite, so it is safe
on the event loop and from any thread. The writer (`runlog_writer`) takes whatever has queued,
waiting at most `batch_ms` after the first record or until `max_batch` records are held, and
inserts them in one statement. A kill -9 therefore loses at most the rows of about one batch
window. `log_committed()` lets a caller wait (without blocking the event loop) until its row is
committed: such a row is written as soon as it queues, with whatever queued beside it (group
commit); with `durable` on, the executor answers a call only after that.

No row can stop the writer: shaping (`runlog_rows`) stores text UTF-8 and SQLite can hold, strict
JSON and finite numbers, cuts each text field to `field_max_bytes` and notes every change in the
row (`truncated`, `log_notes`); a row the database still refuses is stored scrubbed or set aside
in `run_log_rejects`, and a writer thread that dies is restarted by its supervisor. `health()`
says how the writer is doing.

Each row has an integer id, handed out when its call starts (`new_id`, from blocks reserved in
the database by `runlog_writer.IdBlocks`), so that the answer can name the row before the writer
has written it: a completion's id is `chatcmpl-<id>`. An id whose row was never written (a call
still running, or a server killed first) names nothing, never another call.

Rows refer to prompts by key + version sha, never by index ids, so an index rebuild leaves
them alone. Other durable features (eval runs, human scores) own their own modules and
migration kinds; they can join `stats()` by (prompt_key, version_sha) and rows by trace_id.

Per-version figures and counts come from rollups that the writer keeps in each batch's
transaction (`runlog_rollup`), so their cost does not grow with the log. Percentiles are
nearest-rank: the p-th percentile of n sorted values is the value at 1-based rank
ceil(p * n / 100), so latencies 1..100 give p50 = 50 and p95 = 95. For a version with up to
EXACT_PERCENTILE_MAX values each is one `ORDER BY ... LIMIT 1 OFFSET rank - 1` walk of a
covering index on (prompt_key, version, column); above that, the rollup's latency histogram
gives it within 5%. Lists page by keyset (`page_after`, an opaque cursor) or by number.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from llmkit import runlog_rollup
from llmkit.db import Connection, DurableStore, Migrations
from llmkit.errors import BadRequest, NotFound, RunLogUnavailable
from llmkit.runlog_rows import (
    Shaper,
    format_time,
    utc_now,  # the stored time shape, used beside rows
)
from llmkit.runlog_writer import DEFAULT_MAX_QUEUED, IdBlocks, LogWriter, RowSink

logger = logging.getLogger("llmkit.runlog")

STATUSES = ("ok", "error", "cancelled")
# Where a call came from; "judge" is an eval's judge grading an answer of the prompt it is
# logged under: such a row is a call about that version, not of it, so stats() leaves it out.
SOURCES = ("api", "ui", "eval", "cli", "judge")
MAX_PAGE_SIZE = 500
MIN_SHA_PREFIX = 4
DEFAULT_BATCH_MS = 20
DEFAULT_FIELD_MAX_BYTES = 1024 * 1024
DEFAULT_DURABLE_WAIT_S = 10.0

Rows = list[dict[str, Any]]
# `llmkit logs` shows trace ids cut to 8 characters; a prefix this long finds one among
# millions of random ids, and a shorter one would rarely name a single call.
MIN_TRACE_PREFIX = 6
AMBIGUOUS_SHOWN = 5
# A log entry is named by its integer id or by its trace id. Trace ids are hex (32 digits), so
# only a value of digits alone can be either: up to this many digits it is read as an id first
# (an id the UI took from a completion), and as a trace id prefix only when no row has that id.
# Longer, it cannot be an id (ids fit in 64 bits), so a trace id prefix of digits alone that
# happens to be an id too is told apart by giving more of it.
MAX_ID_DIGITS = 18


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
_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
_SELECT = f"SELECT id, {', '.join(COLUMNS)} FROM run_log"
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

MIGRATIONS = Migrations("runlog")
migration = MIGRATIONS.register


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE run_log (
            id INTEGER PRIMARY KEY,
            trace_id TEXT NOT NULL UNIQUE,
            prompt_key TEXT NOT NULL,
            version_number INTEGER,
            version_sha TEXT,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
            error TEXT,
            http_status INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost REAL,
            latency_ms INTEGER,
            ttft_ms INTEGER,
            stream INTEGER NOT NULL DEFAULT 0,
            api_key_id INTEGER,
            source TEXT NOT NULL CHECK (source IN ('api', 'ui', 'eval', 'cli')),
            created_at TEXT NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX run_log_created_at ON run_log (created_at)")
    conn.execute("CREATE INDEX run_log_prompt_created_at ON run_log (prompt_key, created_at)")
    # Percentiles read the value at a rank straight from these, without touching the table.
    for column in ("latency_ms", "ttft_ms"):
        conn.execute(
            f"CREATE INDEX run_log_{column} ON run_log"
            f" (prompt_key, version_number, version_sha, {column})"
        )


@migration
def m002_truncated_notes_and_rejects(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE run_log ADD COLUMN truncated TEXT")
    conn.execute("ALTER TABLE run_log ADD COLUMN log_notes TEXT")
    # Rows the database refused even scrubbed: kept with the error, never in the way.
    conn.execute(
        """
        CREATE TABLE run_log_rejects (
            id INTEGER PRIMARY KEY,
            trace_id TEXT,
            error TEXT NOT NULL,
            row TEXT NOT NULL,
            rejected_at TEXT NOT NULL
        )
        """
    )


@migration
def m003_drafts_marked(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE run_log ADD COLUMN draft INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE run_log ADD COLUMN draft_blob TEXT")
    # Drafts used to be logged under the number their commit would get, without a sha (a
    # committed version always has one): marked as drafts, they no longer count for that
    # number. Their text is unknown, so their blob stays null.
    conn.execute(
        "UPDATE run_log SET draft = 1, version_number = NULL"
        " WHERE version_sha IS NULL AND version_number IS NOT NULL"
    )
    # Each draft text is a version of its own in the per-version figures.
    for column in ("latency_ms", "ttft_ms"):
        conn.execute(f"DROP INDEX run_log_{column}")
        conn.execute(
            f"CREATE INDEX run_log_{column} ON run_log"
            f" (prompt_key, version_number, version_sha, draft, draft_blob, {column})"
        )


@migration
def m004_judge_source(conn: sqlite3.Connection) -> None:
    """Rows of the eval judge's calls (source "judge"). SQLite cannot change a CHECK in place,
    so the table is rebuilt (in the migration's one transaction: a kill leaves it either wholly
    old or wholly new). The percentile indexes leave judge rows out, as stats() does, so that a
    percentile is still read from its index alone."""
    conn.execute("ALTER TABLE run_log RENAME TO run_log_m003")
    for name in _RUN_LOG_INDEXES:
        conn.execute(f"DROP INDEX {name}")
    conn.execute(
        """
        CREATE TABLE run_log (
            id INTEGER PRIMARY KEY,
            trace_id TEXT NOT NULL UNIQUE,
            prompt_key TEXT NOT NULL,
            version_number INTEGER,
            version_sha TEXT,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
            error TEXT,
            http_status INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost REAL,
            latency_ms INTEGER,
            ttft_ms INTEGER,
            stream INTEGER NOT NULL DEFAULT 0,
            api_key_id INTEGER,
            source TEXT NOT NULL CHECK (source IN ('api', 'ui', 'eval', 'cli', 'judge')),
            created_at TEXT NOT NULL,
            truncated TEXT,
            log_notes TEXT,
            draft INTEGER NOT NULL DEFAULT 0,
            draft_blob TEXT
        )
        """
    )
    # Spelled out: a migration copies the columns as they were when it shipped.
    columns = (
        "id, trace_id, prompt_key, version_number, version_sha, model, request, response,"
        " status, error, http_status, input_tokens, output_tokens, reasoning_tokens, cost,"
        " latency_ms, ttft_ms, stream, api_key_id, source, created_at, truncated, log_notes,"
        " draft, draft_blob"
    )
    conn.execute(f"INSERT INTO run_log ({columns}) SELECT {columns} FROM run_log_m003")
    conn.execute("DROP TABLE run_log_m003")
    conn.execute("CREATE INDEX run_log_created_at ON run_log (created_at)")
    conn.execute("CREATE INDEX run_log_prompt_created_at ON run_log (prompt_key, created_at)")
    for column in _PERCENTILE_COLUMNS:
        # `source` is in the index too: SQLite reads a column of a partial index's condition
        # from the table unless the index holds it.
        conn.execute(
            f"CREATE INDEX run_log_{column} ON run_log"
            f" (prompt_key, version_number, version_sha, draft, draft_blob, {column}, source)"
            f" WHERE {_NOT_JUDGE}"
        )


@migration
def m005_ids_in_blocks_and_model_names(conn: sqlite3.Connection) -> None:
    """The counter ids are reserved from (see IdBlocks): one row, above every id so far. And
    the model as the call named it, beside what it resolved to."""
    conn.execute("ALTER TABLE run_log ADD COLUMN model_name TEXT")
    conn.execute(
        "CREATE TABLE run_log_ids (one INTEGER PRIMARY KEY CHECK (one = 1),"
        " next_id INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO run_log_ids SELECT 1, COALESCE(MAX(id), 0) + 1 FROM run_log")


@migration
def m006_rollups_and_filter_indexes(conn: Connection) -> None:
    """Per-version rollups, backfilled from every row already logged (see runlog_rollup), and
    the indexes that the model, status and version filters of a page (alone or with a prompt)
    need to read it newest first without scanning the log."""
    runlog_rollup.create_and_backfill(conn, runlog_rollup.CREATE_TABLES)
    _filter_indexes(conn)


def _filter_indexes(conn: Connection) -> None:
    conn.execute("CREATE INDEX run_log_model_created_at ON run_log (model, created_at)")
    conn.execute("CREATE INDEX run_log_status_created_at ON run_log (status, created_at)")
    conn.execute(
        "CREATE INDEX run_log_version_created_at"
        " ON run_log (prompt_key, version_number, created_at)"
    )
    conn.execute(
        "CREATE INDEX run_log_prompt_status_created_at ON run_log (prompt_key, status, created_at)"
    )


@MIGRATIONS.on_postgresql("m001_initial")
def m001_initial_postgresql(conn: Connection) -> None:
    # Text compared by range (trace id prefixes) or sorted (times) collates bytewise, as SQLite.
    conn.execute(
        """
        CREATE TABLE run_log (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            trace_id TEXT COLLATE "C" NOT NULL UNIQUE,
            prompt_key TEXT COLLATE "C" NOT NULL,
            version_number BIGINT,
            version_sha TEXT COLLATE "C",
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
            error TEXT,
            http_status BIGINT,
            input_tokens BIGINT,
            output_tokens BIGINT,
            reasoning_tokens BIGINT,
            cost DOUBLE PRECISION,
            latency_ms DOUBLE PRECISION,
            ttft_ms DOUBLE PRECISION,
            stream BIGINT NOT NULL DEFAULT 0,
            api_key_id BIGINT,
            source TEXT NOT NULL
                CONSTRAINT run_log_source CHECK (source IN ('api', 'ui', 'eval', 'cli')),
            created_at TEXT COLLATE "C" NOT NULL
        )
        """
    )
    conn.execute("CREATE INDEX run_log_created_at ON run_log (created_at)")
    conn.execute("CREATE INDEX run_log_prompt_created_at ON run_log (prompt_key, created_at)")
    for column in ("latency_ms", "ttft_ms"):
        conn.execute(
            f"CREATE INDEX run_log_{column} ON run_log"
            f" (prompt_key, version_number, version_sha, {column})"
        )


@MIGRATIONS.on_postgresql("m002_truncated_notes_and_rejects")
def m002_truncated_notes_and_rejects_postgresql(conn: Connection) -> None:
    conn.execute("ALTER TABLE run_log ADD COLUMN truncated TEXT")
    conn.execute("ALTER TABLE run_log ADD COLUMN log_notes TEXT")
    conn.execute(
        """
        CREATE TABLE run_log_rejects (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            trace_id TEXT,
            error TEXT NOT NULL,
            row TEXT NOT NULL,
            rejected_at TEXT NOT NULL
        )
        """
    )


@MIGRATIONS.on_postgresql("m004_judge_source")
def m004_judge_source_postgresql(conn: Connection) -> None:
    """PostgreSQL changes the CHECK in place; the percentile indexes become partial, as above."""
    conn.execute(
        "ALTER TABLE run_log DROP CONSTRAINT run_log_source, ADD CONSTRAINT run_log_source"
        " CHECK (source IN ('api', 'ui', 'eval', 'cli', 'judge'))"
    )
    for column in _PERCENTILE_COLUMNS:
        conn.execute(f"DROP INDEX run_log_{column}")
        conn.execute(
            f"CREATE INDEX run_log_{column} ON run_log"
            f" (prompt_key, version_number, version_sha, draft, draft_blob, {column}, source)"
            f" WHERE {_NOT_JUDGE}"
        )


@MIGRATIONS.on_postgresql("m005_ids_in_blocks_and_model_names")
def m005_ids_in_blocks_and_model_names_postgresql(conn: Connection) -> None:
    """As on SQLite, and one source of ids: a row inserted without one (by hand, an import)
    takes it from the counter too, under the counter row's lock, instead of from the identity
    sequence, which knows nothing of the blocks IdBlocks hands out."""
    conn.execute("ALTER TABLE run_log ADD COLUMN model_name TEXT")
    conn.execute(
        "CREATE TABLE run_log_ids (one BIGINT PRIMARY KEY CHECK (one = 1), next_id BIGINT NOT NULL)"
    )
    conn.execute("INSERT INTO run_log_ids SELECT 1, COALESCE(MAX(id), 0) + 1 FROM run_log")
    conn.execute(
        "CREATE FUNCTION run_log_next_id() RETURNS BIGINT LANGUAGE sql VOLATILE AS"
        " 'UPDATE run_log_ids SET next_id = next_id + 1 RETURNING next_id - 1'"
    )
    conn.execute("ALTER TABLE run_log ALTER COLUMN id DROP IDENTITY")
    conn.execute("ALTER TABLE run_log ALTER COLUMN id SET DEFAULT run_log_next_id()")


@MIGRATIONS.on_postgresql("m006_rollups_and_filter_indexes")
def m006_rollups_and_filter_indexes_postgresql(conn: Connection) -> None:
    """The rollup tables in PostgreSQL's types (times bytewise, as they are compared)."""
    runlog_rollup.create_and_backfill(conn, runlog_rollup.CREATE_TABLES_POSTGRESQL)
    _filter_indexes(conn)


_RUN_LOG_INDEXES = (
    "run_log_created_at",
    "run_log_prompt_created_at",
    "run_log_latency_ms",
    "run_log_ttft_ms",
)
# The condition of the percentile indexes; a query repeats it word for word to use them.
_NOT_JUDGE = "source != 'judge'"


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


def version_label(row: dict[str, Any]) -> str:
    """How a row's version is shown: its number, else its sha, or `draft <blob>`."""
    if row.get("draft"):
        blob = row.get("draft_blob")
        return f"draft {blob[:7]}" if blob else "draft"
    if row.get("version_number") is not None:
        return str(row["version_number"])
    return (row.get("version_sha") or "?")[:7]


def _shown(value: object) -> str:
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
                f"{param} is not an ISO-8601 time: {_shown(value)}", param=param
            ) from None
    else:
        raise BadRequest(f"{param} is not an ISO-8601 time: {_shown(value)}", param=param)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_time(moment.astimezone(UTC))


def _json_value(text: str | None, truncated: bool = False) -> Any:
    if text is None:
        return None
    if truncated:
        # A cut JSON text is a prefix, which may parse as some other value ("12345" -> "123"),
        # except a string cut inside its quotes: no proper prefix of a JSON string is one.
        if text.startswith('"'):
            try:
                value = json.loads(text)
            except ValueError:
                return text
            if isinstance(value, str):
                return value
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _check_record(record: RunRecord) -> None:
    for name in ("trace_id", "prompt_key", "model"):
        value = getattr(record, name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"Run record {name} must be a non-empty string: {_shown(value)}")
    if record.status not in STATUSES:
        raise BadRequest(
            f"Unknown run status {_shown(record.status)} (expected one of: {', '.join(STATUSES)})"
        )
    if record.source not in SOURCES:
        raise BadRequest(
            f"Unknown run source {_shown(record.source)} (expected one of: {', '.join(SOURCES)})"
        )
    for name in _INT_FIELDS:
        value = getattr(record, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise BadRequest(f"Run record {name} must be an integer or None: {_shown(value)}")
    if record.id is not None and not 0 < record.id < 2**63:
        raise BadRequest(f"Run record id must be a positive 64-bit integer: {_shown(record.id)}")
    for name in _NUMBER_FIELDS:
        value = getattr(record, name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise BadRequest(f"Run record {name} must be a number or None: {_shown(value)}")
    for name in ("version_sha", "draft_blob", "model_name", "error"):
        value = getattr(record, name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Run record {name} must be a string or None: {_shown(value)}")
    if not isinstance(record.draft, bool):
        raise BadRequest(f"Run record draft must be true or false: {_shown(record.draft)}")
    if record.draft and (record.version_number is not None or record.version_sha is not None):
        raise BadRequest(
            "A draft run record has no version number or sha (it is named by its draft_blob):"
            f" got {_shown(record.version_number)} and {_shown(record.version_sha)}"
        )
    if not record.draft and record.draft_blob is not None:
        raise BadRequest(f"Run record draft_blob is for drafts only: {_shown(record.draft_blob)}")


def _to_row(record: RunRecord, field_max_bytes: int) -> tuple[Any, ...]:
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
    if not (isinstance(created, str) and _CANONICAL_TIME.match(created)):
        created = canonical_time(created, "created_at")
    values["created_at"] = created
    values["truncated"] = json.dumps(shaper.truncated) if shaper.truncated else None
    values["log_notes"] = json.dumps(shaper.notes, ensure_ascii=False) if shaper.notes else None
    return tuple(values[name] for name in COLUMNS)


def _row_to_dict(row: Any) -> dict[str, Any]:
    """A row as the API and the CLI show it: ours, and beside them LLMKit's names for what it
    has too (`status_code`, the request and response as JSON text in `request_body` and
    `response_data`, which LLMKit's UI hands to JSON.parse); `model_name` of a row logged
    without one is the model it ran."""
    result = {name: row[name] for name in COLUMNS}
    truncated = _json_list(result["truncated"])
    result["request"], request_text = _json_field(result["request"], "request" in truncated)
    result["response"], response_text = _json_field(result["response"], "response" in truncated)
    result["stream"] = bool(result["stream"])
    result["draft"] = bool(result["draft"])
    result["truncated"] = truncated
    result["log_notes"] = _json_list(result["log_notes"])
    result["model_name"] = result["model_name"] or result["model"]
    result["status_code"] = result["http_status"]
    result["request_body"] = request_text
    result["response_data"] = response_text
    return result


def _json_field(text: str | None, truncated: bool) -> tuple[Any, str | None]:
    """A stored JSON field as its value and as JSON text: the stored text itself when it is
    JSON, else (cut, or stored before it had to be JSON) the JSON of the text it reads as."""
    value = _json_value(text, truncated)
    if text is None:
        return None, None
    if value is not text:
        return value, text
    # _json_value hands back the very text it was given when that is not JSON (or is cut).
    return value, json.dumps(text, ensure_ascii=False)


def _expire(committed: asyncio.Future[None], trace_id: str, runlog: RunLog) -> None:
    if not committed.done():
        committed.set_exception(
            RunLogUnavailable(
                f"The run log did not commit run {trace_id} within {runlog.durable_wait_s:g} s"
                " (see GET /healthz); it stays queued"
            )
        )


def _json_list(text: str | None) -> list[Any]:
    value = _json_value(text)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


class RunLog:
    """The run log of one database. `durable`: callers that answer after logging wait for the
    commit (`log_committed`); a row someone waits for cuts the batch window short."""

    def __init__(
        self,
        db: DurableStore,
        batch_ms: int = DEFAULT_BATCH_MS,
        max_batch: int = 500,
        *,
        durable: bool = False,
        field_max_bytes: int = DEFAULT_FIELD_MAX_BYTES,
        durable_wait_s: float = DEFAULT_DURABLE_WAIT_S,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        if max_batch < 1:
            raise BadRequest(f"max_batch must be at least 1, got {max_batch!r}")
        if field_max_bytes < 1024:
            raise BadRequest(
                "The run log's field cap (LLMKIT_LOG_FIELD_MAX_BYTES) must be at least 1024"
                f" bytes, got {field_max_bytes!r}"
            )
        if not durable_wait_s > 0:
            raise BadRequest(
                "The run log's durable wait (LLMKIT_LOG_DURABLE_WAIT_S) must be more than 0"
                f" seconds, got {durable_wait_s!r}"
            )
        self._db = db
        self.durable = durable
        self.field_max_bytes = field_max_bytes
        self.durable_wait_s = durable_wait_s
        db.migrate(MIGRATIONS)
        self._ids = IdBlocks(db, counter_table="run_log_ids", table="run_log")
        self._writer = LogWriter(
            db,
            ids=self._ids,
            table="run_log",
            columns=COLUMNS,
            rejects_table="run_log_rejects",
            notes_column="log_notes",
            batch_s=max(batch_ms, 0) / 1000,
            max_batch=max_batch,
            max_queued=max_queued,
            on_insert=runlog_rollup.RollUp(COLUMNS),
        )

    # Writing

    def start(self) -> None:
        self._writer.start()
        self._ids.start()

    def new_id(self, *, wait: bool = True) -> int | None:
        """The id of a row about to be logged, never handed out before by any process sharing
        the log; see IdBlocks. Without `wait` (on the event loop), only an id at hand in
        memory; with it, a block is reserved if need be. None when there is none at hand, or
        the database cannot reserve one now: the record is then logged without an id, and the
        writer gives it one."""
        if not wait:
            return self._ids.take()
        try:
            return self._ids.next_id()
        except Exception as exc:
            logger.warning("run log: no id reserved for a call (%s); the writer will give one", exc)
            return None

    def log(self, record: RunRecord) -> None:
        """Queue a record for writing; returns at once. Records logged before start() wait.
        A slow or unreachable store costs memory up to `max_queued` rows, then drops rows
        (counted in health()), never a blocked request."""
        self._writer.put(_to_row(record, self.field_max_bytes))

    async def log_committed(self, record: RunRecord) -> None:
        """Queue a record and wait, without blocking the event loop, until its row is committed
        (or set aside with its error); RunLogUnavailable when that takes over durable_wait_s.
        The row stays queued either way."""
        row = _to_row(record, self.field_max_bytes)
        if not self._writer.started:
            self.start()
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        self._writer.put(row, committed)
        # One timer rather than asyncio.wait_for, which adds a future and callbacks per call.
        expiry = loop.call_later(self.durable_wait_s, _expire, committed, record.trace_id, self)
        try:
            await committed
        finally:
            expiry.cancel()

    def add_sink(self, sink: RowSink) -> None:
        """Hand `sink` each row too, in COLUMNS order: as it is queued and once committed."""
        self._writer.add_sink(sink)

    def flush(self, timeout: float = 5) -> bool:
        """Wait until every record logged before this call is written. False on timeout."""
        return self._writer.flush(timeout)

    def close(self, timeout: float = 30) -> None:
        """Write everything logged so far and stop the writer. Idempotent."""
        self._ids.close()
        self._writer.close(timeout)

    def health(self) -> dict[str, Any]:
        """The writer's state for /healthz: alive, queue depth, counters, last error type."""
        return {**self._writer.health(), "durable": self.durable}

    @property
    def batches_written(self) -> int:
        return self._writer.batches_written

    @property
    def rows_written(self) -> int:
        return self._writer.rows_written

    @property
    def rows_rejected(self) -> int:
        return self._writer.rows_rejected

    @property
    def write_failures(self) -> int:
        return self._writer.write_failures

    def rejects(self, limit: int = 50) -> Rows:
        """Rows the database refused even scrubbed, newest first, with their errors."""
        rows = (
            self._db.reader()
            .execute(
                "SELECT trace_id, error, row, rejected_at FROM run_log_rejects"
                " ORDER BY id DESC LIMIT ?",
                (min(_check_positive(limit, "limit"), MAX_PAGE_SIZE),),
            )
            .fetchall()
        )
        return [
            {
                "trace_id": r["trace_id"],
                "error": r["error"],
                "row": _json_value(r["row"]),
                "rejected_at": r["rejected_at"],
            }
            for r in rows
        ]

    # Reading

    def list(
        self,
        page: int = 1,
        page_size: int = 50,
        prompt: str | None = None,
        version: str | int | None = None,
        status: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        model: str | None = None,
    ) -> Rows:
        """Runs newest first, by page number. `since` is inclusive, `until` exclusive;
        `version` matches a version number or a version sha prefix; page_size is capped at
        MAX_PAGE_SIZE. A page costs a walk of the index over the rows before it (without
        reading them): deep pages are for the UI's page numbers, `page_after` for programs."""
        return self.numbered_page(
            page, page_size, prompt, version, status, since, until, model
        ).rows

    def numbered_page(
        self,
        page: int = 1,
        page_size: int = 50,
        prompt: str | None = None,
        version: str | int | None = None,
        status: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        model: str | None = None,
    ) -> LogPage:
        """Page `page` by number, with the cursor of the page that follows it."""
        page = _check_positive(page, "page")
        page_size = min(_check_positive(page_size, "page_size"), MAX_PAGE_SIZE)
        where, params = _filters(prompt, version, status, since, until, model)
        # The offset walks the index alone (ids only); just the page's rows are read.
        rows = (
            self._db.reader()
            .execute(
                f"{_SELECT} WHERE id IN (SELECT id FROM run_log{where}"
                f" ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?)"
                f" ORDER BY created_at DESC, id DESC",
                (*params, page_size + 1, (page - 1) * page_size),
            )
            .fetchall()
        )
        return _page_of(rows, page_size)

    def page_after(
        self,
        cursor: str | None = None,
        limit: int = 50,
        prompt: str | None = None,
        version: str | int | None = None,
        status: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        model: str | None = None,
    ) -> LogPage:
        """The `limit` runs after `cursor` (from the start without one), newest first, and
        the cursor of the next page (None after the last). A page is one range read of an
        index, whatever its depth; rows logged while a client pages are never shown twice and
        never make it skip a row, since a cursor is a position in (created_at, id) order. The
        filters are not in the cursor: send the same ones with each page."""
        limit = min(_check_positive(limit, "limit"), MAX_PAGE_SIZE)
        where, params = _filters(prompt, version, status, since, until, model)
        if cursor is not None:
            created_at, row_id = decode_cursor(cursor)
            where += " AND " if where else " WHERE "
            # The first term is a range of every (..., created_at) index; the second the tie.
            where += "created_at <= ? AND (created_at < ? OR id < ?)"
            params = [*params, created_at, created_at, row_id]
        rows = (
            self._db.reader()
            .execute(
                f"{_SELECT}{where} ORDER BY created_at DESC, id DESC LIMIT ?",
                (*params, limit + 1),
            )
            .fetchall()
        )
        return _page_of(rows, limit)

    def page_before(
        self,
        cursor: str,
        limit: int = 50,
        prompt: str | None = None,
        version: str | int | None = None,
        status: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        model: str | None = None,
    ) -> LogPage:
        """The `limit` runs just newer than the position `cursor` names, newest first as
        `page_after` gives them: a page back, for a reader paging by cursor (the UI's
        "Newer"). Its `next_cursor` names its first row when still newer runs match, so that
        the page before it is `page_before(next_cursor)`; None when it reaches the newest run.
        The same range read as `page_after`, walking the index the other way."""
        limit = min(_check_positive(limit, "limit"), MAX_PAGE_SIZE)
        created_at, row_id = decode_cursor(cursor)
        where, params = _filters(prompt, version, status, since, until, model)
        where += " AND " if where else " WHERE "
        where += "created_at >= ? AND (created_at > ? OR id > ?)"
        rows = (
            self._db.reader()
            .execute(
                f"{_SELECT}{where} ORDER BY created_at, id LIMIT ?",
                (*params, created_at, created_at, row_id, limit + 1),
            )
            .fetchall()
        )
        shown = [_row_to_dict(row) for row in reversed(rows[:limit])]
        following = None
        if len(rows) > limit and shown:
            following = encode_cursor(shown[0]["created_at"], shown[0]["id"])
        return LogPage(shown, following)

    def count(
        self,
        prompt: str | None = None,
        version: str | int | None = None,
        status: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        model: str | None = None,
    ) -> int:
        """How many runs match. Without a time range, a sum over the rollups (its cost grows
        with the number of versions and models, not of runs); with one, a count of the index
        over the rows in the range."""
        where, params = _filters(prompt, version, status, since, until, model)
        reader = self._db.reader()
        if since is None and until is None:
            by_prompt = prompt is not None or version is not None
            return runlog_rollup.count(reader, where, params, by_prompt=by_prompt)
        row = reader.execute(f"SELECT COUNT(*) FROM run_log{where}", params).fetchone()
        return int(row[0])

    def get(self, trace_id: str) -> dict[str, Any] | None:
        row = self._db.reader().execute(f"{_SELECT} WHERE trace_id = ?", (trace_id,)).fetchone()
        return None if row is None else _row_to_dict(row)

    def get_by_id(self, log_id: int) -> dict[str, Any] | None:
        if not 0 < log_id < 2**63:  # SQLite cannot even compare a larger integer
            return None
        row = self._db.reader().execute(f"{_SELECT} WHERE id = ?", (log_id,)).fetchone()
        return None if row is None else _row_to_dict(row)

    def find(self, ident: str) -> dict[str, Any]:
        """The row named by `ident`: its integer id, its trace id, or a unique prefix of its
        trace id. Digits alone (at most MAX_ID_DIGITS) are an id first, and a trace id prefix
        only when no row has that id."""
        if ident.isascii() and ident.isdigit() and len(ident) <= MAX_ID_DIGITS:
            row = self.get_by_id(int(ident))
            if row is not None:
                return row
            if len(ident) < MIN_TRACE_PREFIX:
                raise NotFound(_no_id(ident), param="id")
            try:
                return self._find_trace(ident)
            except NotFound:
                raise NotFound(
                    f"{_no_id(ident)}, nor one whose trace id starts {ident!r}", param="id"
                ) from None
        return self._find_trace(ident)

    def _find_trace(self, trace: str) -> dict[str, Any]:
        """The row whose trace id is `trace`, or else the one it starts (as `llmkit logs` shows
        them, cut short). A prefix shorter than MIN_TRACE_PREFIX, or one that starts several
        trace ids, is a 400 naming them; none is a 404. Read through the trace id's index."""
        try:
            trace.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from a terminal's stray bytes)
            raise NotFound(f"No log entry with trace id {trace!r}", param="trace_id") from None
        row = self.get(trace)
        if row is not None:
            return row
        if len(trace) < MIN_TRACE_PREFIX:
            raise BadRequest(
                f"No log entry with trace id {trace!r}, and a trace id prefix needs at least"
                f" {MIN_TRACE_PREFIX} characters",
                param="trace_id",
                code="trace_prefix_too_short",
            )
        # Every id that starts with `trace` sorts in [trace, trace with its last character
        # incremented): a range on the unique index, not a scan of the log.
        step = ord(trace[-1]) + 1
        step = 0xE000 if 0xD800 <= step < 0xE000 else step  # surrogates are not characters
        above = trace[:-1] + chr(step) if step <= 0x10FFFF else None
        rows = []
        if above is not None:
            rows = (
                self._db.reader()
                .execute(
                    f"{_SELECT} WHERE trace_id >= ? AND trace_id < ? ORDER BY trace_id LIMIT ?",
                    (trace, above, AMBIGUOUS_SHOWN + 1),
                )
                .fetchall()
            )
        if not rows:
            raise NotFound(f"No log entry with trace id {trace!r}", param="trace_id")
        if len(rows) > 1:
            shown = ", ".join(r["trace_id"] for r in rows[:AMBIGUOUS_SHOWN])
            more = " and more" if len(rows) > AMBIGUOUS_SHOWN else ""
            raise BadRequest(
                f"Trace id prefix {trace!r} is ambiguous: it starts {shown}{more};"
                " give more characters",
                param="trace_id",
                code="ambiguous_trace_id",
            )
        return _row_to_dict(rows[0])

    def stats(self, prompt_key: str) -> Rows:
        """Per-version figures for one prompt, ordered by version number (unnumbered last),
        read from the rollups (see runlog_rollup): exact counts, tokens and cost; exact
        nearest-rank percentiles for a version with up to EXACT_PERCENTILE_MAX values, and
        within 5% from its latency histogram above that. The eval judge's calls about a version
        (source "judge") are not calls of it: left out."""
        reader = self._db.reader()
        result = []
        for row in runlog_rollup.version_totals(reader, prompt_key):
            version = (
                prompt_key,
                row["version_number"],
                row["version_sha"],
                row["draft"],
                row["draft_blob"],
            )
            count = int(row["count"])
            latency_n, ttft_n = int(row["latency_n"]), int(row["ttft_n"])
            result.append(
                {
                    "version_number": row["version_number"],
                    "version_sha": row["version_sha"],
                    "draft": bool(row["draft"]),
                    "draft_blob": row["draft_blob"],
                    "count": count,
                    "error_count": int(row["error_count"]),
                    "error_rate": row["error_count"] / count,
                    "latency_p50_ms": _version_percentile(
                        reader, row["version_key"], version, "latency_ms", 50, latency_n
                    ),
                    "latency_p95_ms": _version_percentile(
                        reader, row["version_key"], version, "latency_ms", 95, latency_n
                    ),
                    "ttft_p50_ms": _version_percentile(
                        reader, row["version_key"], version, "ttft_ms", 50, ttft_n
                    ),
                    "input_tokens": int(row["input_tokens"]),
                    "output_tokens": int(row["output_tokens"]),
                    "reasoning_tokens": int(row["reasoning_tokens"]),
                    "cost": row["cost"],
                    "first_at": row["first_at"],
                    "last_at": row["last_at"],
                }
            )
        result.sort(
            key=lambda s: (
                s["version_number"] is None,
                s["version_number"] or 0,
                s["draft"],
                s["first_at"],
            )
        )
        return result


def _no_id(ident: str) -> str:
    return (
        f"No log entry with id {int(ident)} (an id is given to a call when it starts: a call"
        " still running, or one whose server stopped before writing it, has no entry)"
    )


_PERCENTILE_COLUMNS = ("latency_ms", "ttft_ms")


def _version_percentile(
    reader: Connection,
    version_key: str,
    version: tuple[str, int | None, str | None, int, str | None],
    column: str,
    p: int,
    n: int,
) -> float | None:
    """Exact from the index for up to EXACT_PERCENTILE_MAX values, else from the histogram."""
    if n <= runlog_rollup.EXACT_PERCENTILE_MAX:
        return _percentile(reader, column, version, p, n)
    return runlog_rollup.histogram_percentile(reader, version[0], version_key, column, p, n)


def _percentile(
    reader: Connection,
    column: str,
    version: tuple[str, int | None, str | None, int, str | None],
    p: int,
    n: int,
) -> float | None:
    """The nearest-rank p-th percentile of `column` over one version's n non-null values: the
    value at 1-based rank ceil(p * n / 100), read from the covering index."""
    assert column in _PERCENTILE_COLUMNS
    if n == 0:
        return None
    rank = -(-p * n // 100)
    row = reader.execute(
        f"SELECT {column} FROM run_log"
        f" WHERE prompt_key = ? AND version_number IS NOT DISTINCT FROM ?"
        f" AND version_sha IS NOT DISTINCT FROM ? AND draft = ?"
        f" AND draft_blob IS NOT DISTINCT FROM ?"
        f" AND {column} IS NOT NULL AND {_NOT_JUDGE} ORDER BY {column} LIMIT 1 OFFSET ?",
        (*version, rank - 1),
    ).fetchone()
    return None if row is None else row[0]


@dataclass
class LogPage:
    """A page of runs, newest first, and the cursor of the page after it (None: the last)."""

    rows: Rows
    next_cursor: str | None


def _page_of(rows: list[Any], size: int) -> LogPage:
    """`rows` were read with one more than `size`: whether there is a next page is whether
    that extra row came."""
    shown = rows[:size]
    following = None
    if len(rows) > size and shown:
        last = shown[-1]
        following = encode_cursor(last["created_at"], last["id"])
    return LogPage([_row_to_dict(row) for row in shown], following)


def encode_cursor(created_at: str, row_id: int) -> str:
    """A position in the log's (created_at, id) order, opaque to clients."""
    raw = json.dumps([created_at, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object) -> tuple[str, int]:
    """A cursor that encode_cursor made, or BadRequest naming `cursor`."""
    bad = BadRequest(
        f"cursor is not a cursor this server gave out: {_shown(cursor)}", param="cursor"
    )
    if not isinstance(cursor, str) or not cursor or len(cursor) > 200:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
    except ValueError:
        raise bad from None
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and _CANONICAL_TIME.match(value[0])
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and 0 <= value[1] <= 2**63 - 1
    ):
        raise bad
    return value[0], value[1]


def _check_positive(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{param} must be a positive integer, got {_shown(value)}", param=param)
    return value


def _filters(
    prompt: str | None,
    version: str | int | None,
    status: str | None,
    since: str | datetime | None,
    until: str | datetime | None,
    model: str | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest(
                f"prompt must be a non-empty prompt key, got {_shown(prompt)}", param="prompt"
            )
        clauses.append("prompt_key = ?")
        params.append(prompt)
    if version is not None:
        clause, values = _version_filter(version)
        clauses.append(clause)
        params.extend(values)
    if status is not None:
        if status not in STATUSES:
            raise BadRequest(
                f"Unknown status {_shown(status)} (expected one of: {', '.join(STATUSES)})",
                param="status",
            )
        # Status has three values: with a model to narrow by, SQLite must walk that index,
        # not this one (`|| ''` keeps a column's index out of a plan, portably); with a
        # prompt, (prompt_key, status, created_at) serves both.
        narrower = prompt is None and model is not None
        clauses.append("status || '' = ?" if narrower else "status = ?")
        params.append(status)
    if model is not None:
        if not isinstance(model, str) or not model:
            raise BadRequest(
                f"model must be a non-empty string, got {_shown(model)}", param="model"
            )
        clauses.append("model || '' = ?" if prompt is not None else "model = ?")
        params.append(model)
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(canonical_time(since, "since"))
    if until is not None:
        clauses.append("created_at < ?")
        params.append(canonical_time(until, "until"))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _version_filter(version: str | int) -> tuple[str, list[Any]]:
    """A version number, a sha prefix (at least MIN_SHA_PREFIX hex digits), digits that may
    be either, or `draft` (every draft run)."""
    if isinstance(version, int) and not isinstance(version, bool):
        return "version_number = ?", [version]
    text = version.strip().lower() if isinstance(version, str) else ""
    if text == "draft":
        return "draft = 1", []
    is_hex = bool(text) and len(text) <= 40 and all(c in "0123456789abcdef" for c in text)
    sha_prefix = is_hex and len(text) >= MIN_SHA_PREFIX
    # Digits too large for a version number can still be a sha prefix.
    if text.isdigit() and text.isascii() and len(text) <= 18:
        if sha_prefix:
            return "(version_number = ? OR version_sha LIKE ?)", [int(text), text + "%"]
        return "version_number = ?", [int(text)]
    if sha_prefix:
        return "version_sha LIKE ?", [text + "%"]
    raise BadRequest(
        f"version must be a version number, a commit sha prefix of at least"
        f" {MIN_SHA_PREFIX} hex digits or 'draft', got {_shown(version)}",
        param="version",
    )
