"""Reading the run log: one entry by id or trace id, and pages of entries, filtered.

Lists page by keyset (`page_after`, an opaque cursor that is a position in the log's
(created_at, id) order) or by number (`numbered_page`, for the UI's page numbers). Each read is
a range of an index: the filters are written so that SQLite picks the index that narrows most.
Counts without a time range, like per-version stats, come from the rollups.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict, Unpack

from llmkit import runlog_rollup
from llmkit.db import MAX_SQLITE_INT, DurableStore
from llmkit.errors import BadRequest, NotFound
from llmkit.runlog_entries import entry_from_row, json_value
from llmkit.runlog_record import CANONICAL_TIME, COLUMNS, STATUSES, canonical_time, shown
from llmkit.runlog_stats import version_stats

Rows = list[dict[str, Any]]
MAX_PAGE_SIZE = 500
MIN_SHA_PREFIX = 4
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
_SELECT = f"SELECT id, {', '.join(COLUMNS)} FROM run_log"


class LogFilters(TypedDict, total=False):
    """What every read of a range of the log is narrowed by, by keyword, None (or left out)
    for any: `since` is inclusive, `until` exclusive; `version` matches a version number, a
    version sha prefix or `draft`."""

    prompt: str | None
    version: str | int | None
    status: str | None
    since: str | datetime | None
    until: str | datetime | None
    model: str | None


class RunLogQueries:
    """The read side of a run log (RunLog adds the writer): every read is on `db`'s reader."""

    def __init__(self, db: DurableStore) -> None:
        self._db = db

    def list(
        self,
        page: int = 1,
        page_size: int = 50,
        **filters: Unpack[LogFilters],
    ) -> Rows:
        """Runs newest first, by page number. `since` is inclusive, `until` exclusive;
        `version` matches a version number or a version sha prefix; page_size is capped at
        MAX_PAGE_SIZE. A page costs a walk of the index over the rows before it (without
        reading them): deep pages are for the UI's page numbers, `page_after` for programs."""
        return self.numbered_page(page, page_size, **filters).rows

    def numbered_page(
        self,
        page: int = 1,
        page_size: int = 50,
        **filters: Unpack[LogFilters],
    ) -> LogPage:
        """Page `page` by number, with the cursor of the page that follows it."""
        page = _check_positive(page, "page")
        page_size = min(_check_positive(page_size, "page_size"), MAX_PAGE_SIZE)
        where, params = _filters(**filters)
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
        **filters: Unpack[LogFilters],
    ) -> LogPage:
        """The `limit` runs after `cursor` (from the start without one), newest first, and
        the cursor of the next page (None after the last). A page is one range read of an
        index, whatever its depth; rows logged while a client pages are never shown twice and
        never make it skip a row, since a cursor is a position in (created_at, id) order. The
        filters are not in the cursor: send the same ones with each page."""
        limit = min(_check_positive(limit, "limit"), MAX_PAGE_SIZE)
        where, params = _filters(**filters)
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
        **filters: Unpack[LogFilters],
    ) -> LogPage:
        """The `limit` runs just newer than the position `cursor` names, newest first as
        `page_after` gives them: a page back, for a reader paging by cursor (the UI's
        "Newer"). Its `next_cursor` names its first row when still newer runs match, so that
        the page before it is `page_before(next_cursor)`; None when it reaches the newest run.
        The same range read as `page_after`, walking the index the other way."""
        limit = min(_check_positive(limit, "limit"), MAX_PAGE_SIZE)
        created_at, row_id = decode_cursor(cursor)
        where, params = _filters(**filters)
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
        entries = [entry_from_row(row) for row in reversed(rows[:limit])]
        following = None
        if len(rows) > limit and entries:
            following = encode_cursor(entries[0]["created_at"], entries[0]["id"])
        return LogPage(entries, following)

    def count(
        self,
        **filters: Unpack[LogFilters],
    ) -> int:
        """How many runs match. Without a time range, a sum over the rollups (its cost grows
        with the number of versions and models, not of runs); with one, a count of the index
        over the rows in the range."""
        where, params = _filters(**filters)
        reader = self._db.reader()
        if filters.get("since") is None and filters.get("until") is None:
            by_prompt = filters.get("prompt") is not None or filters.get("version") is not None
            return runlog_rollup.count(reader, where, params, by_prompt=by_prompt)
        row = reader.execute(f"SELECT COUNT(*) FROM run_log{where}", params).fetchone()
        return int(row[0])

    def get(self, trace_id: str) -> dict[str, Any] | None:
        row = self._db.reader().execute(f"{_SELECT} WHERE trace_id = ?", (trace_id,)).fetchone()
        return None if row is None else entry_from_row(row)

    def get_by_id(self, log_id: int) -> dict[str, Any] | None:
        if not 0 < log_id <= MAX_SQLITE_INT:  # SQLite cannot even compare a larger integer
            return None
        row = self._db.reader().execute(f"{_SELECT} WHERE id = ?", (log_id,)).fetchone()
        return None if row is None else entry_from_row(row)

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
        return entry_from_row(rows[0])

    def stats(self, prompt_key: str) -> Rows:
        """Per-version figures for one prompt (see runlog_stats.version_stats)."""
        return version_stats(self._db.reader(), prompt_key)

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
                "row": json_value(r["row"]),
                "rejected_at": r["rejected_at"],
            }
            for r in rows
        ]


def _no_id(ident: str) -> str:
    return (
        f"No log entry with id {int(ident)} (an id is given to a call when it starts: a call"
        " still running, or one whose server stopped before writing it, has no entry)"
    )


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
    return LogPage([entry_from_row(row) for row in shown], following)


def encode_cursor(created_at: str, row_id: int) -> str:
    """A position in the log's (created_at, id) order, opaque to clients."""
    raw = json.dumps([created_at, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object) -> tuple[str, int]:
    """A cursor that encode_cursor made, or BadRequest naming `cursor`."""
    bad = BadRequest(
        f"cursor is not a cursor this server gave out: {shown(cursor)}", param="cursor"
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
        and CANONICAL_TIME.match(value[0])
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and 0 <= value[1] <= MAX_SQLITE_INT
    ):
        raise bad
    return value[0], value[1]


def _check_positive(value: object, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{param} must be a positive integer, got {shown(value)}", param=param)
    return value


def _filters(
    prompt: str | None = None,
    version: str | int | None = None,
    status: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    model: str | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest(
                f"prompt must be a non-empty prompt key, got {shown(prompt)}", param="prompt"
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
                f"Unknown status {shown(status)} (expected one of: {', '.join(STATUSES)})",
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
            raise BadRequest(f"model must be a non-empty string, got {shown(model)}", param="model")
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
        f" {MIN_SHA_PREFIX} hex digits or 'draft', got {shown(version)}",
        param="version",
    )
