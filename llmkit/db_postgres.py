"""The durable tables on PostgreSQL (`LLMKIT_DATABASE_URL=postgresql://...`), for replicas that
share one store. The same interface as SQLite's `Database` (llmkit.db): one writer connection
behind a lock, one reader connection per thread, the same migration lists, and SQL written once
with `?` parameters, which this module turns into psycopg's `%s`.

psycopg is imported here only, so an install without the `postgres` extra never needs it.

A connection that breaks (the server restarted, a network cut) is dropped and opened again on
next use; what failed on it raises `DatabaseUnavailable` (503), which the run log's writer takes
as transient: it keeps its batch and retries with backoff, so an outage delays rows, never a
request.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from llmkit.db import AfterInsert, Migrations
from llmkit.errors import ConfigError, DatabaseUnavailable

try:
    import psycopg
    from psycopg.types.numeric import FloatLoader
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigError(
        "LLMKIT_DATABASE_URL names a PostgreSQL database, but psycopg is not installed:"
        " pip install 'llmkit[postgres]'"
    ) from exc

CONNECT_TIMEOUT_S = 5
LOCK_TIMEOUT_MS = 30_000  # as SQLite's busy timeout
# PostgreSQL's wire protocol numbers a statement's parameters in 16 bits.
MAX_PARAMS = 65_535
APPLICATION_NAME = "llmkit"
# pg_advisory_xact_lock key that serializes migrations across processes ("llmkit" in ASCII).
MIGRATIONS_LOCK = 0x6C6C6D6B6974
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")


@functools.lru_cache(maxsize=2048)
def to_psycopg(sql: str) -> str:
    """`sql` with each `?` outside quotes as `%s`, and every `%` doubled (psycopg reads `%`)."""

    def token(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        return text.replace("%", "%%")

    return _TOKENS.sub(token, sql)


def redacted(url: str) -> str:
    """`url` without its password, for messages and /healthz."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


class Row:
    """A result row read by position or by column name, as sqlite3.Row is."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return tuple(self._values) == tuple(other._values)
        return tuple(self._values) == other

    def __hash__(self) -> int:
        return hash(tuple(self._values))

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values))!r})"


def _rows(cursor: Any) -> Any:
    description = cursor.description or ()
    # A name that two columns share reads the first, as in sqlite3.Row (a join's `id`).
    index: dict[str, int] = {}
    for i, column in enumerate(description):
        index.setdefault(column.name, i)

    def make(values: Sequence[Any]) -> Row:
        return Row(values, index)

    return make


class PgConnection:
    """A psycopg connection that takes `?` parameters; `raw` is psycopg's own."""

    dialect = "postgresql"

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        try:
            return self.raw.execute(to_psycopg(sql), params)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _unavailable(exc) from exc

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Any:
        cursor = self.raw.cursor()
        try:
            cursor.executemany(to_psycopg(sql), list(params))
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _unavailable(exc) from exc
        return cursor

    @property
    def usable(self) -> bool:
        return not (self.raw.closed or self.raw.broken)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection may fail even to close
            self.raw.close()


class ReaderConnection(PgConnection):
    """A thread's reader (autocommit, no transaction of its own): a statement that finds the
    connection lost (the server restarted, an idle connection cut) is sent once more on a new
    one, since a read outside a transaction can be repeated."""

    def __init__(self, raw: Any, reconnect: Any) -> None:
        super().__init__(raw)
        self._reconnect = reconnect

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Any:
        try:
            return self.raw.execute(to_psycopg(sql), params)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if self.usable:
                raise _unavailable(exc) from exc
        self.close()
        try:
            self.raw = self._reconnect()
            return self.raw.execute(to_psycopg(sql), params)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _unavailable(exc) from exc


class TransientDatabaseError(DatabaseUnavailable):
    """A statement PostgreSQL says may pass if tried again (a lost connection, a lock timeout,
    a serialization failure, a full disk), keeping psycopg's error as its cause."""


def _unavailable(exc: BaseException) -> TransientDatabaseError:
    return TransientDatabaseError(f"The PostgreSQL database is unavailable: {exc}")


class PostgresDatabase:
    """The durable store on PostgreSQL: the interface of llmkit.db.DurableStore."""

    dialect = "postgresql"
    max_params = MAX_PARAMS

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = redacted(url)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[PgConnection] = []
        self._writer: PgConnection | None = None
        self._closed = False
        try:
            self._writer = self._connect()
        except DatabaseUnavailable as exc:
            raise ConfigError(f"Cannot open the database {self.path}: {exc.message}") from None

    def _connect(self) -> PgConnection:
        return PgConnection(self._connect_raw())

    def _connect_raw(self) -> Any:
        try:
            raw = psycopg.connect(
                self.url,
                autocommit=True,
                row_factory=_rows,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=APPLICATION_NAME,
            )
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc
        # AVG and SUM of integers are numeric: read them as floats, as SQLite answers them.
        raw.adapters.register_loader("numeric", FloatLoader)
        raw.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        return raw

    def _writer_connection(self) -> PgConnection:
        if self._closed:
            raise DatabaseUnavailable(f"The database {self.path} is closed")
        if self._writer is None or not self._writer.usable:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._writer = self._connect()
        return self._writer

    def _drop_broken_writer(self) -> None:
        if self._writer is not None and not self._writer.usable:
            self._writer.close()
            self._writer = None

    @contextmanager
    def write(self, busy_timeout_s: float | None = None) -> Iterator[PgConnection]:
        """A transaction on the writer connection; `busy_timeout_s` bounds its waits for locks
        other transactions hold (default 30 s)."""
        with self._write_lock:
            conn = self._writer_connection()
            try:
                with conn.raw.transaction():
                    if busy_timeout_s is not None:
                        timeout = max(1, int(busy_timeout_s * 1000))
                        conn.execute(f"SET LOCAL lock_timeout = {timeout}")
                    yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._drop_broken_writer()
                raise _unavailable(exc) from exc
            except BaseException:
                self._drop_broken_writer()
                raise

    def execute_write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement in its own transaction (autocommit), on the writer connection."""
        with self._write_lock:
            conn = self._writer_connection()
            try:
                conn.execute(sql, params)
            finally:
                self._drop_broken_writer()

    def insert_many(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        then: AfterInsert | None = None,
    ) -> None:
        """Rows into `table` through one COPY, atomic by itself (the connection commits each
        statement): one round trip, no BEGIN and COMMIT of their own, and about 5 us of this
        process's CPU a run-log row where a multi-row INSERT's parameters cost 170. With
        `then`, the COPY and `then` share one transaction."""
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        if then is not None:
            with self.write() as conn:
                self._copy(conn, statement, rows)
                then(conn, [tuple(row) for row in rows])
            return
        with self._write_lock:
            conn = self._writer_connection()
            try:
                self._copy(conn, statement, rows)
            finally:
                self._drop_broken_writer()

    @staticmethod
    def _copy(conn: PgConnection, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            with conn.raw.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _unavailable(exc) from exc

    def reader(self) -> PgConnection:
        conn: PgConnection | None = getattr(self._local, "conn", None)
        if conn is None or not conn.usable:
            if self._closed:
                raise DatabaseUnavailable(f"The database {self.path} is closed")
            if conn is not None:
                conn.close()
            conn = ReaderConnection(self._connect_raw(), self._connect_raw)
            self._local.conn = conn
            with self._write_lock:
                self._readers.append(conn)
                self._readers = [c for c in self._readers if c.usable]
        return conn

    def migrate(self, migrations: Migrations, *, stop_before: str | None = None) -> list[str]:
        """Bring one kind's tables up to date; each migration runs in the transaction that
        records it, under an advisory lock, so two processes starting at once run it once."""
        applied = []
        with self._write_lock:
            done = self._recorded(self._writer_connection(), migrations.kind)
            for name, fn in migrations.functions("postgresql", stop_before):
                if name in done:
                    continue
                with self.write() as conn:
                    conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATIONS_LOCK,))
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS _migrations (kind TEXT NOT NULL,"
                        " name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT"
                        " (to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')),"
                        " PRIMARY KEY (kind, name))"
                    )
                    if name in self._recorded(conn, migrations.kind):
                        continue
                    fn(conn)
                    conn.execute(
                        "INSERT INTO _migrations (kind, name) VALUES (?, ?)",
                        (migrations.kind, name),
                    )
                applied.append(name)
        return applied

    @staticmethod
    def _recorded(conn: PgConnection, kind: str) -> set[str]:
        if conn.execute("SELECT to_regclass('_migrations')").fetchone()[0] is None:
            return set()
        rows = conn.execute("SELECT name FROM _migrations WHERE kind = ?", (kind,)).fetchall()
        return {row[0] for row in rows}

    def transient(self, exc: BaseException) -> bool:
        """Whether trying again may work: the connection, a lock timeout, a serialization
        failure, resources (psycopg's OperationalError covers them all)."""
        return isinstance(
            exc, (TransientDatabaseError, psycopg.OperationalError, psycopg.InterfaceError)
        )

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
