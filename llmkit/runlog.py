"""The run log: one row per provider call, written by one background thread in batches.

`log()` serializes the record, puts it on an unbounded queue and returns: it never waits for
SQLite, so it is safe on the event loop and from any thread. The writer takes whatever has
queued, waiting at most `batch_ms` after the first record or until `max_batch` records are
held, and inserts them in one transaction. A failed transaction is retried with backoff and
reported through `logging`; rows are only ever given up when SQLite rejects the row itself
(a duplicate trace id), and each such row is logged by trace id.

Rows refer to prompts by key + version sha, never by index ids, so an index rebuild leaves
them alone. Other durable features (eval runs, human scores) own their own modules and
migration kinds; they can join `stats()` by (prompt_key, version_sha) and rows by trace_id.

Percentiles are nearest-rank: the p-th percentile of n sorted values is the value at 1-based
rank ceil(p * n / 100), so latencies 1..100 give p50 = 50 and p95 = 95. Each is one
`ORDER BY ... LIMIT 1 OFFSET rank - 1` walk of a covering index on (prompt_key, version,
column), so stats over 100k rows neither sort nor move the rows into Python.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from llmkit.db import Database, Migration
from llmkit.errors import BadRequest

logger = logging.getLogger(__name__)

MIGRATION_KIND = "runlog"
STATUSES = ("ok", "error", "cancelled")
SOURCES = ("api", "ui", "eval", "cli")
MAX_PAGE_SIZE = 500
MIN_SHA_PREFIX = 4
MAX_RETRY_DELAY_S = 2.0

Rows = list[dict[str, Any]]


def new_trace_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> str:
    """Now as ISO-8601 UTC with milliseconds; this fixed shape sorts as text."""
    return _format_time(datetime.now(timezone.utc))


def _format_time(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(kw_only=True)
class RunRecord:
    """One provider call. `request` and `response` are JSON-able values (a streamed response is
    the assembled text, a str); they are stored as JSON text and read back as values."""

    trace_id: str = field(default_factory=new_trace_id)
    prompt_key: str
    version_number: int | None = None
    version_sha: str | None = None
    model: str
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
_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
_INSERT = f"INSERT INTO run_log ({', '.join(FIELDS)}) VALUES ({', '.join('?' for _ in FIELDS)})"
_SELECT = f"SELECT {', '.join(FIELDS)} FROM run_log"
_INT_FIELDS = (
    "version_number",
    "http_status",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "api_key_id",
)
_NUMBER_FIELDS = ("cost", "latency_ms", "ttft_ms")
# Errors that a row causes by itself: retrying the same row can never succeed.
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError)


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


MIGRATIONS: list[Migration] = [m001_initial]


def migrate(db: Database) -> list[str]:
    return db.migrate(MIGRATION_KIND, MIGRATIONS)


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
        moment = moment.replace(tzinfo=timezone.utc)
    return _format_time(moment.astimezone(timezone.utc))


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        # A circular structure: keep what can be kept rather than lose the row.
        return json.dumps(repr(value), ensure_ascii=False)


def _json_value(text: str | None) -> Any:
    if text is None:
        return None
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
    for name in _NUMBER_FIELDS:
        value = getattr(record, name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise BadRequest(f"Run record {name} must be a number or None: {_shown(value)}")
    for name in ("version_sha", "error"):
        value = getattr(record, name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Run record {name} must be a string or None: {_shown(value)}")


def _to_row(record: RunRecord) -> tuple[Any, ...]:
    _check_record(record)
    values: dict[str, Any] = dict(record.__dict__)
    values["request"] = _json_text(record.request)
    values["response"] = None if record.response is None else _json_text(record.response)
    values["stream"] = 1 if record.stream else 0
    created = record.created_at
    if not (isinstance(created, str) and _CANONICAL_TIME.match(created)):
        created = canonical_time(created, "created_at")
    values["created_at"] = created
    return tuple(values[name] for name in FIELDS)


def _row_to_dict(row: sqlite3.Row) -> dict[str, Any]:
    result = {name: row[name] for name in FIELDS}
    result["request"] = _json_value(result["request"])
    result["response"] = _json_value(result["response"])
    result["stream"] = bool(result["stream"])
    return result


class _Stop:
    pass


_Item = tuple[Any, ...] | threading.Event | _Stop


class RunLog:
    def __init__(self, db: Database, batch_ms: int = 50, max_batch: int = 500) -> None:
        if max_batch < 1:
            raise BadRequest(f"max_batch must be at least 1, got {max_batch!r}")
        self._db = db
        self._batch_s = max(batch_ms, 0) / 1000
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._state_lock = threading.Lock()
        self._inline_lock = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        # Read by tests and health checks; only the writer updates them.
        self.batches_written = 0
        self.rows_written = 0
        self.rows_rejected = 0
        self.write_failures = 0
        migrate(db)

    # Writing

    def start(self) -> None:
        with self._state_lock:
            if self._closed:
                raise RuntimeError("RunLog is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="llmkit-runlog-writer", daemon=True
            )
            self._thread.start()

    def log(self, record: RunRecord) -> None:
        """Queue a record for writing; returns at once. Records logged before start() wait.
        The queue is unbounded: a slow disk costs memory, never a blocked request."""
        row = _to_row(record)
        with self._state_lock:
            # Under the lock so that nothing can be queued behind close()'s stop marker.
            if self._closed:
                raise RuntimeError(f"RunLog is closed; run {record.trace_id} not logged")
            self._queue.put(row)

    def flush(self, timeout: float = 5) -> bool:
        """Wait until every record logged before this call is written. False on timeout."""
        done = threading.Event()
        with self._state_lock:
            thread, closed = self._thread, self._closed
            if thread is not None and not closed:
                self._queue.put(done)
                self._wake.set()
        if thread is None:
            self._drain_inline()
            return True
        if closed:
            thread.join(timeout)
            return not thread.is_alive()
        return done.wait(timeout)

    def close(self, timeout: float = 30) -> None:
        """Write everything logged so far and stop the writer. Idempotent."""
        with self._state_lock:
            already_closed, self._closed = self._closed, True
            thread = self._thread
            if thread is not None and not already_closed:
                self._queue.put(_Stop())
                self._wake.set()
        if thread is None:
            self._drain_inline()
            return
        thread.join(timeout)
        if thread.is_alive():
            logger.error(
                "run log: writer still busy after %.1f s at close; about %d queued items unwritten",
                timeout,
                self._queue.qsize(),
            )

    def _run(self) -> None:
        while True:
            rows, flushes, stop = self._take_batch(wait=True)
            if rows:
                self._write_batch(rows)
            for done in flushes:
                done.set()
            if stop:
                return

    def _drain_inline(self) -> None:
        """Without a writer thread (never started), write what has queued in this thread."""
        with self._inline_lock:
            while True:
                rows, flushes, _ = self._take_batch(wait=False)
                if rows:
                    self._write_batch(rows)
                for done in flushes:
                    done.set()
                if not rows and not flushes:
                    return

    def _take_batch(
        self, wait: bool
    ) -> tuple[list[tuple[Any, ...]], list[threading.Event], bool]:
        """Rows queued from now until `batch_ms` after the first one, `max_batch` rows, a flush
        marker or the stop marker, whichever comes first."""
        rows: list[tuple[Any, ...]] = []
        flushes: list[threading.Event] = []
        try:
            item = self._queue.get() if wait else self._queue.get_nowait()
        except queue.Empty:
            return rows, flushes, False
        deadline = time.monotonic() + self._batch_s if wait else -math.inf
        slept = False
        while True:
            if isinstance(item, _Stop):
                return rows, flushes, True
            if isinstance(item, threading.Event):
                flushes.append(item)
                return rows, flushes, False
            rows.append(item)
            if len(rows) >= self._max_batch:
                return rows, flushes, False
            try:
                item = self._queue.get_nowait()
                continue
            except queue.Empty:
                pass
            # Sleep out the batch window once instead of blocking on get() per row: a blocked
            # consumer is woken by every put(), which cost the event loop time on each request.
            remaining = deadline - time.monotonic()
            if slept or remaining <= 0:
                return rows, flushes, False
            # flush() and close() cut the wait short.
            self._wake.wait(remaining)
            self._wake.clear()
            slept = True
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return rows, flushes, False

    def _write_batch(self, rows: list[tuple[Any, ...]]) -> None:
        attempt = 0
        while True:
            try:
                self._insert(rows)
                return
            except sqlite3.Error as exc:
                attempt += 1
                self.write_failures += 1
                delay = min(MAX_RETRY_DELAY_S, 0.05 * 2 ** (attempt - 1))
                logger.error(
                    "run log: writing %d rows failed (attempt %d), retrying in %.2f s: %s",
                    len(rows),
                    attempt,
                    delay,
                    exc,
                )
                time.sleep(delay)

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        try:
            with self._db.write() as conn:
                conn.executemany(_INSERT, rows)
            written = len(rows)
        except _ROW_ERRORS:
            written = self._insert_one_by_one(rows)
        self.batches_written += 1
        self.rows_written += written

    def _insert_one_by_one(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert the rows that SQLite accepts, in one transaction, and report the others."""
        written = 0
        rejected: list[tuple[str, str]] = []
        with self._db.write() as conn:
            for row in rows:
                try:
                    conn.execute(_INSERT, row)
                    written += 1
                except _ROW_ERRORS as exc:
                    rejected.append((row[0], str(exc)))
        for trace_id, reason in rejected:
            logger.error("run log: run %s rejected by the database: %s", trace_id, reason)
        self.rows_rejected += len(rejected)
        return written

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
    ) -> Rows:
        """Runs newest first. `since` is inclusive, `until` exclusive; `version` matches a
        version number or a version sha prefix; page_size is capped at MAX_PAGE_SIZE."""
        page = _check_positive(page, "page")
        page_size = min(_check_positive(page_size, "page_size"), MAX_PAGE_SIZE)
        where, params = _filters(prompt, version, status, since, until)
        rows = (
            self._db.reader()
            .execute(
                f"{_SELECT}{where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (*params, page_size, (page - 1) * page_size),
            )
            .fetchall()
        )
        return [_row_to_dict(row) for row in rows]

    def count(
        self,
        prompt: str | None = None,
        version: str | int | None = None,
        status: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
    ) -> int:
        where, params = _filters(prompt, version, status, since, until)
        row = self._db.reader().execute(f"SELECT COUNT(*) FROM run_log{where}", params).fetchone()
        return int(row[0])

    def get(self, trace_id: str) -> dict[str, Any] | None:
        row = (
            self._db.reader()
            .execute(f"{_SELECT} WHERE trace_id = ?", (trace_id,))
            .fetchone()
        )
        return None if row is None else _row_to_dict(row)

    def stats(self, prompt_key: str) -> Rows:
        """Per-version figures for one prompt, ordered by version number (unnumbered last)."""
        reader = self._db.reader()
        result = []
        for row in reader.execute(_STATS_TOTALS, (prompt_key,)).fetchall():
            version = (prompt_key, row["version_number"], row["version_sha"])
            count = int(row["count"])
            latency_n, ttft_n = int(row["latency_n"]), int(row["ttft_n"])
            result.append(
                {
                    "version_number": row["version_number"],
                    "version_sha": row["version_sha"],
                    "count": count,
                    "error_count": int(row["error_count"]),
                    "error_rate": row["error_count"] / count,
                    "latency_p50_ms": _percentile(reader, "latency_ms", version, 50, latency_n),
                    "latency_p95_ms": _percentile(reader, "latency_ms", version, 95, latency_n),
                    "ttft_p50_ms": _percentile(reader, "ttft_ms", version, 50, ttft_n),
                    "input_tokens": int(row["input_tokens"]),
                    "output_tokens": int(row["output_tokens"]),
                    "reasoning_tokens": int(row["reasoning_tokens"]),
                    "cost": row["cost"],
                    "first_at": row["first_at"],
                    "last_at": row["last_at"],
                }
            )
        result.sort(
            key=lambda s: (s["version_number"] is None, s["version_number"] or 0, s["first_at"])
        )
        return result


_STATS_TOTALS = """
SELECT version_number, version_sha,
       COUNT(*) AS count,
       SUM(status = 'error') AS error_count,
       COUNT(latency_ms) AS latency_n,
       COUNT(ttft_ms) AS ttft_n,
       COALESCE(SUM(input_tokens), 0) AS input_tokens,
       COALESCE(SUM(output_tokens), 0) AS output_tokens,
       COALESCE(SUM(reasoning_tokens), 0) AS reasoning_tokens,
       SUM(cost) AS cost,
       MIN(created_at) AS first_at,
       MAX(created_at) AS last_at
FROM run_log
WHERE prompt_key = ?
GROUP BY version_number, version_sha
"""

_PERCENTILE_COLUMNS = ("latency_ms", "ttft_ms")


def _percentile(
    reader: sqlite3.Connection,
    column: str,
    version: tuple[str, int | None, str | None],
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
        f" WHERE prompt_key = ? AND version_number IS ? AND version_sha IS ?"
        f" AND {column} IS NOT NULL ORDER BY {column} LIMIT 1 OFFSET ?",
        (*version, rank - 1),
    ).fetchone()
    return None if row is None else row[0]


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
        clauses.append("status = ?")
        params.append(status)
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(canonical_time(since, "since"))
    if until is not None:
        clauses.append("created_at < ?")
        params.append(canonical_time(until, "until"))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _version_filter(version: str | int) -> tuple[str, list[Any]]:
    """A version number, a sha prefix (at least MIN_SHA_PREFIX hex digits), or digits that may
    be either."""
    if isinstance(version, int) and not isinstance(version, bool):
        return "version_number = ?", [version]
    text = version.strip().lower() if isinstance(version, str) else ""
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
        f"version must be a version number or a commit sha prefix of at least"
        f" {MIN_SHA_PREFIX} hex digits, got {_shown(version)}",
        param="version",
    )
