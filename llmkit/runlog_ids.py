"""Run-log row ids reserved in blocks, so that a call's id is known before its row is written and
is unique across every process that shares the log (see IdBlocks)."""

from __future__ import annotations

import logging
import threading

from llmkit.db import DurableStore

logger = logging.getLogger("llmkit.runlog")

# Id blocks double from the first to the largest, so a block is never larger than the ids the
# process has used so far: a short-lived process (one `llmkit run`) skips few ids when it exits,
# and a busy one reserves rarely (a reservation takes a millisecond or more; at the largest
# block that keeps ahead of far more calls a second than a gateway serves).
FIRST_ID_BLOCK = 1
MAX_ID_BLOCK = 65536
# A refill that failed is tried again after a backoff that stops growing here.
MAX_REFILL_DELAY_S = 2.0


class IdBlocks:
    """Integer ids for rows not yet written, unique across every process that shares the log.

    The database holds one counter, `counter_table.next_id`: no id at or above it has been
    handed out. A process reserves a block by moving the counter up by the block's size in one
    write transaction, and hands the block's ids out from memory; a refill thread reserves the
    next block while the current one is in use, so a call rarely waits for the database. On
    PostgreSQL the same one-row UPDATE ... RETURNING reserves a block under the row's lock, and
    a row inserted without an id takes one from the same counter (run_log's default, see
    runlog m005), so the two never meet.

    An id is handed out only after its block's reservation has committed, and the counter only
    moves up, so an id is never handed out twice, even after a kill -9. What a killed process
    had reserved and not used, and the ids of calls whose rows it had not written yet, are
    gaps: such an id names no row (a 404), never another call's. The counter also moves past
    the largest id in `table`, in case a row was written with an id from elsewhere.
    """

    def __init__(self, db: DurableStore, *, counter_table: str, table: str) -> None:
        self._db = db
        above = f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table})"
        # CASE rather than SQLite's MAX(a, b) or PostgreSQL's GREATEST: one SQL for both.
        self._move_sql = (
            f"UPDATE {counter_table} SET next_id ="
            f" CASE WHEN next_id > {above} THEN next_id ELSE {above} END + ?"
            " RETURNING next_id"
        )
        self._lock = threading.Lock()
        self._next = 0
        self._end = 0  # the current block is [_next, _end)
        self._spare: tuple[int, int] | None = None
        self._size = FIRST_ID_BLOCK
        self._asked = False
        self._wanted = threading.Event()
        self._stopping = False
        self._refiller: threading.Thread | None = None

    def start(self) -> None:
        """Start reserving blocks ahead, on a thread of their own."""
        with self._lock:
            if self._refiller is not None or self._stopping:
                return
            self._refiller = threading.Thread(
                target=self._refill, name="llmkit-runlog-ids", daemon=True
            )
            self._refiller.start()
            self._asked = True
        self._wanted.set()

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            refiller = self._refiller
        self._wanted.set()
        if refiller is not None:
            refiller.join(5)

    def take(self) -> int | None:
        """A new id if one is at hand in memory, else None: never waits for SQLite, so the
        event loop may call it. Asks the refill thread for the next block when it is due."""
        with self._lock:
            return self._taken() if self._at_hand() else None

    def next_id(self) -> int:
        """A new id, reserving a block first when none is at hand: may wait for SQLite (and
        raise what it raises), so never on the event loop."""
        with self._lock:
            if not self._at_hand():
                self._next, self._end = self._reserve(self._grown())
            return self._taken()

    def _at_hand(self) -> bool:
        if self._next >= self._end and self._spare is not None:
            (self._next, self._end), self._spare = self._spare, None
        return self._next < self._end

    def _taken(self) -> int:
        handed = self._next
        self._next += 1
        if self._spare is None and not self._asked and self._refiller is not None:
            self._asked = True
            self._wanted.set()
        return handed

    def _grown(self) -> int:
        size = self._size
        self._size = min(size * 2, MAX_ID_BLOCK)
        return size

    def _reserve(self, size: int) -> tuple[int, int]:
        with self._db.write() as conn:
            (end,) = conn.execute(self._move_sql, (size,)).fetchone()
        return int(end) - size, int(end)

    def _refill(self) -> None:
        failures = 0
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with self._lock:
                if self._stopping:
                    return
                size = self._grown()
            try:
                block: tuple[int, int] | None = self._reserve(size)
                failures = 0
            except Exception as exc:  # meanwhile calls log without ids; the writer gives them
                failures += 1
                logger.warning("run log: could not reserve ids ahead (%d): %s", failures, exc)
                block = None
                # Not asked again at once: a database that fails keeps failing for a while.
                self._wanted.wait(min(MAX_REFILL_DELAY_S, 0.05 * 2 ** (failures - 1)))
            with self._lock:
                # A block reserved by a caller (next_id) while this one was being reserved lies
                # above it: this one is left as a gap, so that ids are handed out in order.
                if self._spare is None and (block is None or block[0] >= self._end):
                    self._spare = block
                self._asked = False
