"""The run log's writer: one thread that writes queued rows in batches, and a supervisor thread
that restarts it if it ever dies.

Nothing a row holds stops the writer. A batch that fails for a reason SQLite says may pass
(an OperationalError: the database is locked, a table is missing, the disk is full) is retried
with backoff until it is written. A batch that fails for any other reason (a row SQLite or the
UTF-8 codec refuses, a duplicate trace id, MemoryError, a bug) is written row by row: a row
that fails is tried again scrubbed (every value forced into a form SQLite binds, with a note
saying so), and a row that fails even then is set aside, with its error, in the rejects table.
Only a row that cannot even be set aside is lost, and each one is logged by trace id.

If the thread dies anyway (an exception that escapes every guard), the supervisor restarts it
with backoff and logs it. What the dead thread had taken from the queue is kept: the next
writer writes it, or gives it up (logged by trace id) when it has already killed two writers.

A batch is one `insert_many` of the store (on SQLite one INSERT with many rows in its VALUES
list; on PostgreSQL one COPY), and `on_insert` (the rollups) is given the rows the
transaction stored, as stored, before it commits, so that what is derived from the rows
is written with them or not at all.
SQLite calls release the GIL and a busy event loop can make each take-back wait a switch
interval (5 ms): one statement per batch takes it back about once, where a row-at-a-time
executemany took it back once per row and fell hundreds of milliseconds behind under load,
which is what a kill -9 loses. For the same reason the writer never checkpoints the WAL: a
commit that crosses SQLite's auto-checkpoint threshold copies the WAL into the database and
fsyncs it (tens to hundreds of milliseconds) while every later row waits. While the writer
runs, auto-checkpoints are off on the database's writer connection and a checkpointer thread
runs a PASSIVE checkpoint every CHECKPOINT_EVERY_S on a connection of its own, beside the
commits rather than in their way.

On PostgreSQL the same writer runs on the store's writer connection: a batch is one COPY in a
transaction, one round trip (a multi-row INSERT's parameters cost the process about 35 times the
CPU), and a lost connection is transient like a locked SQLite file:
the batch is kept and retried with backoff while the store reconnects. The queue is bounded
(`max_queued`): during a long outage the rows past it are dropped rather than grow memory without
end, counted (`rows_dropped` in /healthz) and logged; a caller waiting for its row's commit is
told at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from llmkit.db import DurableStore, connect
from llmkit.errors import RunLogUnavailable
from llmkit.runlog_ids import IdBlocks
from llmkit.runlog_rows import scrubbed, storable_text, utc_now

logger = logging.getLogger("llmkit.runlog")

MAX_RETRY_DELAY_S = 2.0
# A batch in hand when two writers died is given up rather than kill a third.
DEATHS_BEFORE_GIVING_UP = 2
# Each text field of a set-aside row is kept up to this many characters.
REJECT_FIELD_MAX = 64 * 1024
LOST_IDS_SHOWN = 20
CHECKPOINT_EVERY_S = 1.0
# Rows queued at most; more are dropped (and counted) rather than held without end.
DEFAULT_MAX_QUEUED = 100_000
# A drop is logged at most this often (with the count since the last log).
DROP_LOG_EVERY_S = 5.0
# SQLite's own default, restored when the writer stops.
AUTO_CHECKPOINT_PAGES = 1000

T = TypeVar("T")


@dataclass(slots=True)
class QueuedRow:
    """A row's values in column order, and the future of a caller waiting for its commit."""

    values: tuple[Any, ...]
    waiter: asyncio.Future[None] | None = None


class RowSink(Protocol):
    """Told of each row as it is queued (on the caller's thread, in its context) and of the rows
    of each batch once stored (committed, or set aside as rejects; on the writer thread), in
    column order. Both must return at once and are never waited on: what they do with the rows
    (the OTLP span export) happens on a thread of their own."""

    def queued(self, values: tuple[Any, ...]) -> None: ...

    def committed(self, rows: list[tuple[Any, ...]]) -> None: ...


class _Stop:
    pass


_Item = QueuedRow | threading.Event | _Stop


@dataclass
class _Hand:
    """What a writer has taken from the queue and not yet finished with."""

    rows: list[QueuedRow] = field(default_factory=list)
    flushes: list[threading.Event] = field(default_factory=list)
    stop: bool = False
    deaths: int = 0

    def take(self, item: _Item) -> QueuedRow | None:
        """`item` into the hand: a row is added and returned; a flush marker or the stop marker
        is noted, and None says that it ends the batch."""
        if isinstance(item, _Stop):
            self.stop = True
            return None
        if isinstance(item, threading.Event):
            self.flushes.append(item)
            return None
        self.rows.append(item)
        return item


def transient(exc: BaseException) -> bool:
    """Whether SQLite says trying again may work (locked, busy, disk full, table missing)."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class QueueFull(RunLogUnavailable):
    """The writer's queue holds `max_queued` rows (the store has been failing for a while)."""


class LogWriter:
    """Rows queued by any thread, written by one writer thread. `table` takes `columns`;
    `rejects_table` takes (trace_id, error, row, rejected_at)."""

    def __init__(
        self,
        db: DurableStore,
        *,
        table: str,
        columns: tuple[str, ...],
        rejects_table: str,
        notes_column: str,
        batch_s: float,
        max_batch: int,
        max_queued: int = DEFAULT_MAX_QUEUED,
        ids: IdBlocks,
        on_insert: Callable[[Any, list[tuple[Any, ...]]], None] | None = None,
    ) -> None:
        self._db = db
        self._on_insert = on_insert
        self._table = table
        self._columns = columns
        self._ids = ids
        self._id_index = columns.index("id")
        self._trace_index = columns.index("trace_id")
        self._notes_index = columns.index(notes_column)
        self._reject_sql = (
            f"INSERT INTO {rejects_table} (trace_id, error, row, rejected_at) VALUES (?, ?, ?, ?)"
        )
        self._insert_sql: dict[int, str] = {}
        self._batch_s = batch_s
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._transient = db.transient
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._state_lock = threading.Lock()
        self._inline_lock = threading.Lock()
        self._closed = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._supervisor: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_stop = threading.Event()
        self._sqlite_path: str | Path = ":memory:"
        self._hand: _Hand | None = None
        self._deaths_in_a_row = 0
        self._sinks: tuple[RowSink, ...] = ()
        # Health, read by anyone; only the writer (and the supervisor, for restarts) updates it.
        self.batches_written = 0
        self.rows_written = 0
        self.rows_scrubbed = 0
        self.rows_rejected = 0
        self.rows_lost = 0
        self.rows_dropped = 0
        self._dropped_logged = 0
        self._dropped_logged_at = -DROP_LOG_EVERY_S
        self.write_failures = 0
        self.restarts = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.last_error_at: str | None = None

    # Queueing, flushing, closing

    def start(self) -> None:
        with self._state_lock:
            if self._closed:
                raise RuntimeError("RunLog is closed")
            if self._supervisor is not None:
                return
            self._thread = self._new_writer()
            self._supervisor = threading.Thread(
                target=self._supervise, name="llmkit-runlog-supervisor", daemon=True
            )
            self._thread.start()
            self._supervisor.start()
            path = getattr(self._db, "path", ":memory:")
            if self._db.dialect == "sqlite" and str(path) != ":memory:":
                self._sqlite_path = path
                self._start_checkpoints()

    def _start_checkpoints(self) -> None:
        try:
            self._db.execute_write("PRAGMA wal_autocheckpoint = 0")
        except Exception as exc:  # SQLite goes on checkpointing in commits: slower, not wrong
            logger.warning("run log: could not move WAL checkpoints off the writer: %s", exc)
            return
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name="llmkit-runlog-checkpointer", daemon=True
        )
        self._checkpointer.start()

    @property
    def started(self) -> bool:
        return self._supervisor is not None

    def add_sink(self, sink: RowSink) -> None:
        self._sinks = (*self._sinks, sink)

    def put(self, values: tuple[Any, ...], waiter: asyncio.Future[None] | None = None) -> None:
        for sink in self._sinks:  # before the row can be committed and handed on
            _told(sink.queued, values)
        with self._state_lock:
            # Under the lock so that nothing can be queued behind close()'s stop marker.
            if self._closed:
                raise RuntimeError(f"RunLog is closed; run {values[self._trace_index]} not logged")
            if self._queue.qsize() >= self._max_queued:
                self._dropped(values, waiter)
                return
            self._queue.put(QueuedRow(values, waiter))
            if waiter is not None:
                # A caller waits for this row: cut the batch window short.
                self._wake.set()

    def _dropped(self, values: tuple[Any, ...], waiter: asyncio.Future[None] | None) -> None:
        """A row that finds the queue full: counted, logged now and then, and a caller waiting
        for it told at once (it is not written)."""
        self.rows_dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= DROP_LOG_EVERY_S:
            logger.error(
                "run log: queue full (%d rows; the store is failing: %s); %d run(s) dropped"
                " since the last report, %d in all, the latest %s",
                self._max_queued,
                self.last_error,
                self.rows_dropped - self._dropped_logged,
                self.rows_dropped,
                values[self._trace_index],
            )
            self._dropped_logged, self._dropped_logged_at = self.rows_dropped, now
        if waiter is not None:
            raise QueueFull(
                f"The run log's queue is full ({self._max_queued} rows waiting for the store);"
                f" run {values[self._trace_index]} was not logged (see GET /healthz)"
            )

    def flush(self, timeout: float) -> bool:
        done = threading.Event()
        with self._state_lock:
            supervisor, closed = self._supervisor, self._closed
            if supervisor is not None and not closed:
                self._queue.put(done)
                self._wake.set()
        if supervisor is None:
            self._drain_inline()
            return True
        if closed:
            supervisor.join(timeout)
            return not supervisor.is_alive()
        return done.wait(timeout)

    def close(self, timeout: float) -> None:
        with self._state_lock:
            already_closed, self._closed = self._closed, True
            supervisor = self._supervisor
            if supervisor is not None and not already_closed:
                self._queue.put(_Stop())
                self._wake.set()
        if supervisor is None:
            self._drain_inline()
            return
        supervisor.join(timeout)
        if supervisor.is_alive():
            logger.error(
                "run log: writer still busy after %.1f s at close; about %d queued items unwritten",
                timeout,
                self._queue.qsize(),
            )
        self._stop_checkpoints()

    def _stop_checkpoints(self) -> None:
        checkpointer = self._checkpointer
        if checkpointer is None or self._checkpointer_stop.is_set():
            return
        self._checkpointer_stop.set()
        checkpointer.join(CHECKPOINT_EVERY_S * 10)
        try:
            self._db.execute_write(f"PRAGMA wal_autocheckpoint = {AUTO_CHECKPOINT_PAGES}")
        except Exception as exc:
            logger.warning("run log: could not turn auto-checkpoints back on: %s", exc)

    def health(self) -> dict[str, Any]:
        """Cheap to call: counters and flags, no lock and no SQL. Errors are named by type
        only: their messages can quote logged data, and health is served without a key."""
        thread = self._thread
        alive = thread is not None and thread.is_alive()
        failing_since = self.failing_since
        retrying = failing_since is not None
        degraded = self.started and not self._stopped and (not alive or retrying)
        return {
            "status": "degraded" if degraded or self.rows_dropped else "ok",
            "store": self._db.dialect,
            "started": self.started,
            "alive": alive,
            "queued": self._queue.qsize(),
            "max_queued": self._max_queued,
            "rows_dropped": self.rows_dropped,
            "rows_written": self.rows_written,
            "rows_scrubbed": self.rows_scrubbed,
            "rows_rejected": self.rows_rejected,
            "rows_lost": self.rows_lost,
            "write_failures": self.write_failures,
            "retrying_for_s": (
                round(time.monotonic() - failing_since, 3) if failing_since is not None else None
            ),
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }

    # The threads

    def _new_writer(self) -> threading.Thread:
        return threading.Thread(target=self._main, name="llmkit-runlog-writer", daemon=True)

    def _supervise(self) -> None:
        while True:
            thread = self._thread
            assert thread is not None
            thread.join()
            if self._stopped:
                return
            self.restarts += 1
            self._deaths_in_a_row += 1
            delay = min(MAX_RETRY_DELAY_S, 0.05 * 2 ** (self._deaths_in_a_row - 1))
            logger.error(
                "run log: the writer thread died (%s); restart %d in %.2f s",
                self.last_error,
                self.restarts,
                delay,
            )
            time.sleep(delay)
            self._thread = self._new_writer()
            self._thread.start()

    def _checkpoints(self) -> None:
        """Copy the WAL into the database now and then, off the writer's path (see above)."""
        conn: sqlite3.Connection | None = None
        while not self._checkpointer_stop.wait(CHECKPOINT_EVERY_S):
            try:
                conn = conn or connect(self._sqlite_path)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as exc:  # never let the WAL grow because of one failed attempt
                logger.warning("run log: WAL checkpoint failed: %s", exc)
        if conn is not None:
            conn.close()

    def _main(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            # Whatever escaped: the supervisor restarts the writer, and the hand is kept.
            self._noted(exc)
            if self._hand is not None:
                self._hand.deaths += 1
            logger.critical("run log: the writer thread died", exc_info=True)
            return
        self._stopped = True

    def _run(self) -> None:
        while True:
            if self._hand is None:
                self._hand = _Hand()
                self._take_batch(self._hand, wait=True)
            hand = self._hand
            if hand.deaths >= DEATHS_BEFORE_GIVING_UP:
                self._give_up(hand.rows, f"its batch killed {hand.deaths} writer threads")
            elif hand.rows:
                self._store(hand.rows)
            self._hand = None
            for done in hand.flushes:
                done.set()
            if hand.stop:
                return

    def _drain_inline(self) -> None:
        """Without a writer thread (never started), write what has queued in this thread."""
        with self._inline_lock:
            while True:
                hand = _Hand()
                self._take_batch(hand, wait=False)
                if hand.rows:
                    self._store(hand.rows)
                for done in hand.flushes:
                    done.set()
                if not hand.rows and not hand.flushes:
                    return

    def _take_batch(self, hand: _Hand, wait: bool) -> None:
        """Into `hand`: rows queued from now until `batch_s` after the first one, `max_batch`
        rows, a flush marker or the stop marker, whichever comes first."""
        try:
            item = self._queue.get() if wait else self._queue.get_nowait()
        except queue.Empty:
            return
        deadline = time.monotonic() + self._batch_s if wait else -1.0
        slept = False
        while True:
            row = hand.take(item)
            if row is None:
                return
            if len(hand.rows) >= self._max_batch or row.waiter is not None:
                # A waiting caller is answered only after the commit: write now, and let the
                # rows that queue meanwhile make the next batch (group commit).
                if row.waiter is not None:
                    self._take_queued(hand)
                return
            try:
                item = self._queue.get_nowait()
                continue
            except queue.Empty:
                pass
            # Sleep out the batch window once instead of blocking on get() per row: a blocked
            # consumer is woken by every put(), which cost the event loop time on each request.
            remaining = deadline - time.monotonic()
            if slept or remaining <= 0:
                return
            # flush(), close() and a waiting caller cut the wait short.
            self._wake.wait(remaining)
            self._wake.clear()
            slept = True
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def _take_queued(self, hand: _Hand) -> None:
        """Whatever rows are queued right now, up to max_batch, stopping at a marker."""
        while len(hand.rows) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if hand.take(item) is None:
                return

    # Writing

    def _store(self, rows: list[QueuedRow]) -> None:
        """Write the rows, whatever they hold; never raises an Exception."""
        try:
            self._retrying(len(rows), lambda: self._give_ids(rows))
            self._retrying(len(rows), lambda: self._insert_batch(rows))
            lost: dict[int, str] = {}
        except Exception as exc:
            self._noted(exc)
            logger.warning(
                "run log: a batch of %d rows failed (%s: %s); writing it row by row",
                len(rows),
                type(exc).__name__,
                exc,
            )
            try:
                lost = self._retrying(len(rows), lambda: self._insert_each(rows))
            except Exception as exc_each:
                self._noted(exc_each)
                self._give_up(rows, f"{type(exc_each).__name__}: {exc_each}")
                return
        else:
            self.rows_written += len(rows)
        self.batches_written += 1
        self._deaths_in_a_row = 0
        self._settle(rows, lost)
        for sink in self._sinks:
            _told(sink.committed, [row.values for row in rows if id(row) not in lost])

    def _retrying(self, count: int, write: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                result = write()
            except Exception as exc:
                if not self._transient(exc):
                    raise
                attempt += 1
                self.write_failures += 1
                self._noted(exc)
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                delay = min(MAX_RETRY_DELAY_S, 0.05 * 2 ** (attempt - 1))
                logger.error(
                    "run log: writing %d rows failed (attempt %d), retrying in %.2f s: %s",
                    count,
                    attempt,
                    delay,
                    exc,
                )
                time.sleep(delay)
                continue
            if self.failing_since is not None:
                logger.warning("run log: writing again after %d failed attempt(s)", attempt)
                self.failing_since = None
            return result

    def _give_ids(self, rows: list[QueuedRow]) -> None:
        """An id for each row queued without one (its caller had no id at hand)."""
        at = self._id_index
        for row in rows:
            if row.values[at] is None:
                row.values = (*row.values[:at], self._ids.next_id(), *row.values[at + 1 :])

    def _insert_batch(self, rows: list[QueuedRow]) -> None:
        self._db.insert_many(
            self._table,
            self._columns,
            [row.values for row in rows],
            then=self._on_insert,
        )

    def _insert_each(self, rows: list[QueuedRow]) -> dict[int, str]:
        """Each row as it is, else scrubbed, else set aside; in one transaction. Returns the
        rows that could not even be set aside (by id), with why."""
        one = self._insert(1)
        scrubbed_rows: list[tuple[QueuedRow, str]] = []
        rejected: list[tuple[QueuedRow, str]] = []
        lost: dict[int, str] = {}
        stored: list[tuple[Any, ...]] = []
        with self._db.write() as conn:
            for row in rows:
                try:
                    _attempt(conn, one, row.values)
                    stored.append(row.values)
                    continue
                except Exception as exc:
                    if self._transient(exc):
                        raise
                    first = exc
                try:
                    values = self._scrubbed(row.values, first)
                    _attempt(conn, one, values)
                    stored.append(values)
                    scrubbed_rows.append((row, _described(first)))
                    continue
                except Exception as exc:
                    if self._transient(exc):
                        raise
                    second = exc
                try:
                    _attempt(conn, self._reject_sql, self._rejected(row.values, second))
                    rejected.append((row, _described(second)))
                except Exception as exc:
                    if self._transient(exc):
                        raise
                    lost[id(row)] = _described(exc)
            if self._on_insert is not None and stored:
                self._on_insert(conn, stored)
        # Counted once committed: a transaction that is retried must not count twice.
        self.rows_written += len(rows) - len(rejected) - len(lost)
        self.rows_scrubbed += len(scrubbed_rows)
        self.rows_rejected += len(rejected)
        self.rows_lost += len(lost)
        for row, reason in scrubbed_rows:
            logger.warning("run log: run %s stored scrubbed (%s)", self._trace(row), reason)
        for row, reason in rejected:
            logger.error(
                "run log: run %s rejected by the database, set aside: %s", self._trace(row), reason
            )
        for row in rows:
            if id(row) in lost:
                logger.error("run log: run %s lost: %s", self._trace(row), lost[id(row)])
        return lost

    def _give_up(self, rows: list[QueuedRow], reason: str) -> None:
        self.rows_lost += len(rows)
        shown = ", ".join(str(self._trace(row)) for row in rows[:LOST_IDS_SHOWN])
        more = f" and {len(rows) - LOST_IDS_SHOWN} more" if len(rows) > LOST_IDS_SHOWN else ""
        logger.error("run log: %d run(s) lost (%s): %s%s", len(rows), reason, shown, more)
        self._settle(rows, {id(row): reason for row in rows})

    def _settle(self, rows: list[QueuedRow], lost: dict[int, str]) -> None:
        """Tell the callers waiting for these rows, one call per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], str | None]]]
        by_loop = {}
        for row in rows:
            if row.waiter is not None:
                outcome = (row.waiter, lost.get(id(row)))
                by_loop.setdefault(row.waiter.get_loop(), []).append(outcome)
        for loop, outcomes in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, outcomes)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

    # Row forms

    def _insert(self, count: int) -> str:
        sql = self._insert_sql.get(count)
        if sql is None:
            one = "(" + ", ".join("?" for _ in self._columns) + ")"
            sql = (
                f"INSERT INTO {self._table} ({', '.join(self._columns)})"
                f" VALUES {', '.join(one for _ in range(count))}"
            )
            self._insert_sql[count] = sql
        return sql

    def _scrubbed(self, values: tuple[Any, ...], error: BaseException) -> tuple[Any, ...]:
        result = list(scrubbed(values))
        old = result[self._notes_index]
        try:
            notes = json.loads(old) if isinstance(old, str) else []
        except ValueError:
            notes = [old]
        if not isinstance(notes, list):
            notes = [notes]
        notes.append(f"stored scrubbed after the database refused it ({type(error).__name__})")
        result[self._notes_index] = json.dumps(notes, ensure_ascii=False)
        return tuple(result)

    def _rejected(self, values: tuple[Any, ...], error: BaseException) -> tuple[Any, ...]:
        safe = scrubbed(values)
        row = {
            name: value[:REJECT_FIELD_MAX] if isinstance(value, str) else value
            for name, value in zip(self._columns, safe)
        }
        trace = row.get("trace_id")
        return (
            trace if isinstance(trace, str) else None,
            storable_text(_described(error))[0][:REJECT_FIELD_MAX],
            json.dumps(row, ensure_ascii=False),
            utc_now(),
        )

    def _trace(self, row: QueuedRow) -> object:
        try:
            return row.values[self._trace_index]
        except Exception:
            return "?"

    def _noted(self, exc: BaseException) -> None:
        self.last_error = type(exc).__name__
        self.last_error_at = utc_now()


def _attempt(conn: Any, sql: str, values: Sequence[Any]) -> None:
    """One statement under a savepoint, so that its failure undoes only itself: PostgreSQL
    refuses every later statement of a transaction after an error, unless it is rolled back to
    a savepoint (SQLite takes the same SQL)."""
    conn.execute("SAVEPOINT runlog_row")
    try:
        conn.execute(sql, values)
    except BaseException:
        conn.execute("ROLLBACK TO SAVEPOINT runlog_row")
        conn.execute("RELEASE SAVEPOINT runlog_row")
        raise
    conn.execute("RELEASE SAVEPOINT runlog_row")


def _told(hook: Callable[[Any], None], arg: Any) -> None:
    """A sink's failure is logged and goes no further: the rows are the run log's business."""
    try:
        hook(arg)
    except Exception:
        logger.exception("run log: a row sink failed")


def _described(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return type(exc).__name__


def _resolve(outcomes: list[tuple[asyncio.Future[None], str | None]]) -> None:
    for future, lost in outcomes:
        if future.done():
            continue  # the caller stopped waiting (timed out or cancelled)
        if lost is None:
            future.set_result(None)
        else:
            future.set_exception(RunLogUnavailable(f"The run log could not store the call: {lost}"))
