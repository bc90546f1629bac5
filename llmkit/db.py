"""SQLite connections and migrations.

Each group of tables has one migration list, named by its kind and declared beside the code
that owns the tables:

    MIGRATIONS = Migrations("runlog")
    migration = MIGRATIONS.register

    @migration
    def m001_initial(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE run_log (...)")

The lists share one database file and one `_migrations` table, which records (kind, name) for
every migration that ran. The *index* list (`llmkit.index`) builds tables that can be dropped
and rebuilt from git at any time; the *durable* lists (`runlog`, `keys`, `evals`,
`import_llmkit`) hold what exists nowhere else, only ever migrate forward, and are never
touched by a rebuild.

Every list is append-only: add a function, never edit, rename or reorder one that has shipped,
because its name is what existing databases have recorded. A migration is one small function of
SQL run inside the transaction that records it, so a crash leaves it either done and recorded or
neither, and a later dialect (the durable tables in PostgreSQL) can add its own function under the
same name beside it.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Migration = Callable[[sqlite3.Connection], None]
BUSY_TIMEOUT_MS = 30_000  # as connect() sets it
_MIGRATION_NAME = re.compile(r"m(\d{3})_[a-z0-9_]+\Z")


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


class Migrations:
    """One kind's migrations, in the order they shipped.

    `register` is the decorator that appends one. A name is `mNNN_what`, NNN being the
    function's 1-based position in the list, so a migration inserted, dropped or reordered by
    mistake fails at import instead of running out of order on existing databases."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._migrations: list[Migration] = []

    def register(self, fn: Migration) -> Migration:
        position = len(self._migrations) + 1
        match = _MIGRATION_NAME.match(fn.__name__)
        if match is None or int(match.group(1)) != position:
            raise ValueError(
                f"Migration {fn.__name__!r} of {self.kind!r} must be named"
                f" m{position:03d}_<what it does>: it is number {position} of the list"
            )
        self._migrations.append(fn)
        return fn

    @property
    def names(self) -> list[str]:
        return [fn.__name__ for fn in self._migrations]

    def __repr__(self) -> str:
        return f"Migrations({self.kind!r}, {self.names})"

    def apply(self, conn: sqlite3.Connection, *, stop_before: str | None = None) -> list[str]:
        """Run, in order, the migrations that `conn`'s database has not recorded yet (those
        before `stop_before` only, when given: a database as an older llmkit left it).
        Returns the names that ran.

        Finding nothing to run only reads, so opening an up-to-date database never waits for
        another process's write. Each migration runs in its own write transaction, recorded in
        it, and whether it ran is checked again once that transaction holds the write lock: when
        two processes open one database at once, the second waits, then skips what the first
        did."""
        migrations = self._migrations
        if stop_before is not None:
            if stop_before not in self.names:
                raise ValueError(f"No migration {stop_before!r} in {self!r}")
            migrations = migrations[: self.names.index(stop_before)]
        done = self._recorded(conn)
        applied = []
        for fn in migrations:
            if fn.__name__ in done:
                continue
            with transaction(conn):
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS _migrations (kind TEXT NOT NULL,"
                    " name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT (datetime('now')),"
                    " PRIMARY KEY (kind, name))"
                )
                if fn.__name__ in self._recorded(conn):
                    continue
                fn(conn)
                conn.execute(
                    "INSERT INTO _migrations (kind, name) VALUES (?, ?)", (self.kind, fn.__name__)
                )
            applied.append(fn.__name__)
        return applied

    def _recorded(self, conn: sqlite3.Connection) -> set[str]:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
        ).fetchone():
            return set()
        query = "SELECT name FROM _migrations WHERE kind = ?"
        return {row[0] for row in conn.execute(query, (self.kind,))}


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

    def migrate(self, migrations: Migrations, *, stop_before: str | None = None) -> list[str]:
        """Bring one kind's tables up to date (see `Migrations.apply`); returns what ran."""
        with self._write_lock:
            return migrations.apply(self._writer, stop_before=stop_before)

    def close(self) -> None:
        with self._write_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._writer.close()
