"""SQLite connections and migrations.

Each group of tables has one migration list, named by its kind and declared beside the code
that owns the tables:

    MIGRATIONS = Migrations("runlog")
    migration = MIGRATIONS.register

    @migration
    def m001_initial(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE run_log (...)")

The lists share one database file and one `_migrations` table, which records (kind, name) for
every migration that ran. The *index* list (`llmkit.index_schema`) builds tables that can be
dropped and rebuilt from git at any time; the *durable* lists (`runlog`, `keys`, `evals`,
`import_llmkit`) hold what exists nowhere else, only ever migrate forward, and are never
touched by a rebuild.

Every list is append-only: add a function, never edit, rename or reorder one that has shipped,
because its name is what existing databases have recorded. A migration is one small function of
SQL run inside the transaction that records it, so a crash leaves it either done and recorded or
neither, and a later dialect (the durable tables in PostgreSQL) can add its own function under the
same name beside it.

The durable tables live behind one store interface, `DurableStore`, with two implementations:
`Database` here (SQLite, the embedded default, one file beside the index) and
`llmkit.db_postgres.PostgresDatabase` (when `LLMKIT_DATABASE_URL=postgresql://...`). Code that
owns a durable table writes its SQL once, in the portable subset both speak: `?` parameters,
`INSERT ... ON CONFLICT`, `RETURNING id` (never `lastrowid`), `CASE WHEN` (never a boolean
summed), `IS NOT DISTINCT FROM` (never `IS ?`), explicit `NULLS FIRST|LAST`, 0/1 integers for
flags. A migration whose DDL differs (PostgreSQL spells an auto id, a 64-bit integer, a double
and a CHECK change differently) gets a PostgreSQL function registered under the same name with
`@MIGRATIONS.on_postgresql("mNNN_what")`; every other migration runs as it is on both.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

# A migration takes the connection of the dialect it was registered for.
Migration = Callable[[Any], None]
BUSY_TIMEOUT_MS = 30_000  # as connect() sets it
# SQLite's largest integer (PostgreSQL's BIGINT too): a larger one fails inside the driver.
MAX_SQLITE_INT = 2**63 - 1
_MIGRATION_NAME = re.compile(r"m(\d{3})_[a-z0-9_]+\Z")
DIALECTS = ("sqlite", "postgresql")
C = TypeVar("C", bound=sqlite3.Connection)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the durable tables' code uses of a connection, in either dialect; `?` marks a
    parameter in both."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Any: ...


# Called with the connection and the rows just inserted, inside the inserting transaction, so
# that what it writes (the run log's rollups) commits with the rows or not at all.
AfterInsert = Callable[[Any, list[tuple[Any, ...]]], None]


class DurableStore(Protocol):
    """Where the durable tables live: SQLite (`Database`) or PostgreSQL (`PostgresDatabase`).
    One writer at a time per process (`write`, `execute_write`), a reader per thread."""

    dialect: str
    # How many parameters one statement may hold.
    max_params: int

    def write(self, busy_timeout_s: float | None = None) -> AbstractContextManager[Any]: ...

    def execute_write(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    def insert_many(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        then: AfterInsert | None = None,
    ) -> None: ...

    def reader(self) -> Any: ...

    def migrate(self, migrations: Migrations, *, stop_before: str | None = None) -> list[str]: ...

    def transient(self, exc: BaseException) -> bool: ...

    def close(self) -> None: ...


class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection, saying which dialect it speaks (as the PostgreSQL one does)."""

    dialect = "sqlite"


def connect(path: Path | str) -> SqliteConnection:
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path),
        check_same_thread=False,
        timeout=30,
        isolation_level=None,
        factory=SqliteConnection,
    )
    assert isinstance(conn, SqliteConnection)
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
        self._postgresql: dict[str, Migration] = {}

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

    def on_postgresql(self, name: str) -> Callable[[Migration], Migration]:
        """A decorator registering the PostgreSQL spelling of migration `name` (already in the
        list): PostgreSQL runs it in that place instead. Its own function name is free."""

        if name not in self.names:
            raise ValueError(f"No migration {name!r} in {self!r} to spell for PostgreSQL")

        def register(fn: Migration) -> Migration:
            if name in self._postgresql:
                raise ValueError(f"Migration {name!r} of {self.kind!r} has a PostgreSQL spelling")
            self._postgresql[name] = fn
            return fn

        return register

    def functions(
        self, dialect: str, stop_before: str | None = None
    ) -> list[tuple[str, Migration]]:
        """The list as `dialect` runs it, each function under its name, those before
        `stop_before` only when given."""
        migrations = self._migrations
        if stop_before is not None:
            if stop_before not in self.names:
                raise ValueError(f"No migration {stop_before!r} in {self!r}")
            migrations = migrations[: self.names.index(stop_before)]
        variants = self._postgresql if dialect == "postgresql" else {}
        return [(fn.__name__, variants.get(fn.__name__, fn)) for fn in migrations]

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
        migrations = self.functions("sqlite", stop_before)
        done = self._recorded(conn)
        applied = []
        for name, fn in migrations:
            if name in done:
                continue
            with transaction(conn):
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS _migrations (kind TEXT NOT NULL,"
                    " name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT (datetime('now')),"
                    " PRIMARY KEY (kind, name))"
                )
                if name in self._recorded(conn):
                    continue
                fn(conn)
                conn.execute(
                    "INSERT INTO _migrations (kind, name) VALUES (?, ?)", (self.kind, name)
                )
            applied.append(name)
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


def lock_table(conn: Connection, table: str) -> None:
    """Keep other writers of `table` out until this write transaction ends, for a check and an
    insert that must not interleave. SQLite's write transaction (BEGIN IMMEDIATE) already
    excludes every other writer; PostgreSQL's does not."""
    if conn.dialect == "postgresql":
        conn.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")


@contextmanager
def transaction(conn: C) -> Iterator[C]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


class Database:
    """SQLite: one writer connection behind a lock, and one reader connection per thread (WAL
    lets readers run beside the writer). The index's database, and the durable store unless
    LLMKIT_DATABASE_URL names a PostgreSQL one."""

    dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.max_params = _variable_limit()
        self._writer = connect(path)
        self._write_lock = threading.RLock()
        # The reader list has a lock of its own: a thread opening its first reader must not
        # queue behind a write that waits (up to the busy timeout) for another process's lock.
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[SqliteConnection] = []
        self._inserts: dict[tuple[str, tuple[str, ...], int], str] = {}

    @contextmanager
    def write(self, busy_timeout_s: float | None = None) -> Iterator[SqliteConnection]:
        """A transaction on the writer connection; all writes go through here. `busy_timeout_s`
        bounds how long it waits for another process's write transaction (default 30 s), and
        for this process's other writes too: a write that may only wait briefly must not queue
        behind one that waits the full 30 s for a lock another process holds."""
        if busy_timeout_s is None:
            with self._write_lock, transaction(self._writer) as conn:
                yield conn
            return
        if not self._write_lock.acquire(timeout=max(0.0, busy_timeout_s)):
            raise sqlite3.OperationalError(
                f"database is locked: another write in this process held {self.path}"
                f" for more than {busy_timeout_s} s"
            )
        try:
            self._writer.execute(f"PRAGMA busy_timeout={max(0, int(busy_timeout_s * 1000))}")
            try:
                with transaction(self._writer) as conn:
                    yield conn
            finally:
                self._writer.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        finally:
            self._write_lock.release()

    def execute_write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement in SQLite's own implicit transaction on the writer connection: atomic
        like write(), in one step instead of three (BEGIN, the statement, COMMIT)."""
        with self._write_lock:
            self._writer.execute(sql, params)

    def insert_many(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        then: AfterInsert | None = None,
    ) -> None:
        """Rows into `table`, atomically, in as few statements as SQLite's parameter limit
        allows: one multi-row INSERT for a batch that fits, in SQLite's implicit transaction
        (unless `then` is given: it runs after the INSERTs, in their transaction).
        SQLite calls release the GIL, and a busy event loop can make each take-back wait a
        switch interval (5 ms): one statement per batch takes it back about once."""
        step = max(1, self.max_params // len(columns))
        if len(rows) <= step and then is None:
            self.execute_write(self._insert_sql(table, columns, len(rows)), _flat(rows))
            return
        with self.write() as conn:
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                conn.execute(self._insert_sql(table, columns, len(chunk)), _flat(chunk))
            if then is not None:
                then(conn, [tuple(row) for row in rows])

    def _insert_sql(self, table: str, columns: Sequence[str], count: int) -> str:
        key = (table, tuple(columns), count)
        sql = self._inserts.get(key)
        if sql is None:
            one = "(" + ", ".join("?" for _ in columns) + ")"
            sql = (
                f"INSERT INTO {table} ({', '.join(columns)})"
                f" VALUES {', '.join(one for _ in range(count))}"
            )
            self._inserts[key] = sql
        return sql

    def reader(self) -> SqliteConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if str(self.path) == ":memory:":
                return self._writer
            conn = connect(self.path)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def migrate(self, migrations: Migrations, *, stop_before: str | None = None) -> list[str]:
        """Bring one kind's tables up to date (see `Migrations.apply`); returns what ran."""
        with self._write_lock:
            return migrations.apply(self._writer, stop_before=stop_before)

    def transient(self, exc: BaseException) -> bool:
        """Whether SQLite says trying again may work (locked, busy, disk full, table missing)."""
        return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError

    def close(self) -> None:
        with self._write_lock, self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._writer.close()


def _flat(rows: Sequence[Sequence[Any]]) -> list[Any]:
    return [value for row in rows for value in row]


def _variable_limit() -> int:
    """How many ? one statement may hold (999 before SQLite 3.32, 32766 after, or as built)."""
    probe = sqlite3.connect(":memory:")
    try:
        return int(probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    finally:
        probe.close()


def is_postgresql_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_durable(url: str | Path) -> DurableStore:
    """The durable store at `url`: a PostgreSQL URL (psycopg is imported only then), else a
    SQLite file path."""
    if isinstance(url, str) and is_postgresql_url(url):
        from llmkit.db_postgres import PostgresDatabase

        return PostgresDatabase(url)
    return Database(url)
