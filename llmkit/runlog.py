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
the database by `runlog_ids.IdBlocks`), so that the answer can name the row before the writer
has written it: a completion's id is `chatcmpl-<id>`. An id whose row was never written (a call
still running, or a server killed first) names nothing, never another call.

Rows refer to prompts by key + version sha, never by index ids, so an index rebuild leaves
them alone. Other durable features (eval runs, human scores) own their own modules and
migration kinds; they can join `stats()` by (prompt_key, version_sha) and rows by trace_id.

The module holds the log's front (`RunLog`: start, log, flush, close, health). The rest is one
idea a module: the record and its row (`runlog_record`), the tables (`runlog_schema`), reads and
paging (`runlog_query`, which RunLog extends), per-version figures (`runlog_stats`), entries as
the API shows them (`runlog_entries`), values made storable (`runlog_rows`), the writer thread
(`runlog_writer`) and the rollups it keeps (`runlog_rollup`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from llmkit import runlog_rollup
from llmkit.db import DurableStore
from llmkit.errors import BadRequest, RunLogUnavailable
from llmkit.runlog_ids import IdBlocks
from llmkit.runlog_query import RunLogQueries
from llmkit.runlog_record import COLUMNS, DEFAULT_FIELD_MAX_BYTES, RunRecord, to_row
from llmkit.runlog_schema import MIGRATIONS
from llmkit.runlog_writer import DEFAULT_MAX_QUEUED, LogWriter, RowSink

logger = logging.getLogger("llmkit.runlog")

DEFAULT_BATCH_MS = 20
DEFAULT_DURABLE_WAIT_S = 10.0


class RunLog(RunLogQueries):
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
        super().__init__(db)
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
        self._writer.put(to_row(record, self.field_max_bytes))

    async def log_committed(self, record: RunRecord) -> None:
        """Queue a record and wait, without blocking the event loop, until its row is committed
        (or set aside with its error); RunLogUnavailable when that takes over durable_wait_s.
        The row stays queued either way."""
        row = to_row(record, self.field_max_bytes)
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


def _expire(committed: asyncio.Future[None], trace_id: str, runlog: RunLog) -> None:
    if not committed.done():
        committed.set_exception(
            RunLogUnavailable(
                f"The run log did not commit run {trace_id} within {runlog.durable_wait_s:g} s"
                " (see GET /healthz); it stays queued"
            )
        )
