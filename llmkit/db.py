"""SQLite connections and migrations.

Two migration lists live in one database file: the *index* (rebuildable from git at any time)
and the *durable* tables (API keys, run log, eval runs, scores, cache), which only ever migrate
forward and are never touched by a rebuild. Each list is append-only: add a function, never edit
one that has shipped.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Migration = Callable[[sqlite3.Connection], None]
BUSY_TIMEOUT_MS = 30_000  # as connect() sets it


def connect(path: Path | str) -> sqlite3.Connection:
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection, kind: str, migrations: list[Migration]) -> list[str]:
    """Run the migrations of list `kind` that have not run yet, in order. Returns their names."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (kind TEXT NOT NULL, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL DEFAULT (datetime('now')), PRIMARY KEY (kind, name))"
    )
    done = {r[0] for r in conn.execute("SELECT name FROM _migrations WHERE kind = ?", (kind,))}
    applied = []
    for fn in migrations:
        if fn.__name__ in done:
            continue
        with transaction(conn):
            # Checked again under the write lock: another process may have just run it.
            if conn.execute(
                "SELECT 1 FROM _migrations WHERE kind = ? AND name = ?", (kind, fn.__name__)
            ).fetchone():
                continue
            fn(conn)
            conn.execute("INSERT INTO _migrations (kind, name) VALUES (?, ?)", (kind, fn.__name__))
        applied.append(fn.__name__)
    return applied


def run_script(conn: sqlite3.Connection, sql: str) -> None:
    """Run several statements inside the current transaction (unlike executescript, which
    commits first)."""
    statement = ""
    for line in sql.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        conn.execute(statement)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


class Database:
    """One writer connection behind a lock, and one reader connection per thread (WAL lets
    readers run beside the writer)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._writer = connect(path)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    @contextmanager
    def write(self, busy_timeout_s: float | None = None) -> Iterator[sqlite3.Connection]:
        """A transaction on the writer connection; all writes go through here. `busy_timeout_s`
        bounds how long it waits for another process's write transaction (default 30 s)."""
        with self._write_lock:
            if busy_timeout_s is None:
                with transaction(self._writer) as conn:
                    yield conn
                return
            self._writer.execute(f"PRAGMA busy_timeout={max(0, int(busy_timeout_s * 1000))}")
            try:
                with transaction(self._writer) as conn:
                    yield conn
            finally:
                self._writer.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def execute_write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement in SQLite's own implicit transaction on the writer connection: atomic
        like write(), in one step instead of three (BEGIN, the statement, COMMIT)."""
        with self._write_lock:
            self._writer.execute(sql, params)

    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if str(self.path) == ":memory:":
                return self._writer
            conn = connect(self.path)
            self._local.conn = conn
            with self._write_lock:
                self._readers.append(conn)
        return conn

    def migrate(self, kind: str, migrations: list[Migration]) -> list[str]:
        with self._write_lock:
            return migrate(self._writer, kind, migrations)

    def close(self) -> None:
        with self._write_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._writer.close()
