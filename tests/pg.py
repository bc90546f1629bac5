"""The durable store's backends for the tests: `durable_backend` is "sqlite" or "postgresql", so
a test that takes `durable_url` or `durable_db` runs once on each (`sqlite_db` is SQLite alone,
for what only SQLite has). PostgreSQL is a real server:
a throwaway cluster in a temp folder, started once per test session (per xdist worker) by
`pg_server`, stopped at its end whatever happened. Each test has a store of its own: a login
role and its schema (PostgreSQL's default search path, `"$user", public`, puts the role's tables
there), which costs milliseconds where a database of its own costs a second.

The server's binaries are Debian's (`apt-get install postgresql`, which `.ci/run` does). Missing
binaries fail the tests that need them, loudly: a skipped backend would pass for a tested one.
postgres refuses to run as root, so as root the cluster runs as an unprivileged user
(`postgres` when the package made it, else one created here) through runuser.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmkit.db import Database, DurableStore, open_durable
from tests.helpers import free_port

BACKENDS = ("sqlite", "postgresql")
SUPERUSER = "llmkit"
UNPRIVILEGED_USER = "llmkit-pg"
START_TIMEOUT_S = 60
START_ATTEMPTS = 3
# The database of the tests' stores (one schema and role each).
STORES_DATABASE = "stores"
Completed = subprocess.CompletedProcess[str]


def pg_bin_dir() -> Path:
    """The folder of the newest installed PostgreSQL's initdb and pg_ctl; fails the test
    session (never skips) when there is none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    pytest.fail(
        "PostgreSQL's server binaries (initdb, pg_ctl) are not installed, and the durable-store"
        " tests run on PostgreSQL too: apt-get install -y postgresql (.ci/run does)",
        pytrace=False,
    )


def server_user() -> str | None:
    """Who runs the server: None for the current user, unless that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", UNPRIVILEGED_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    # Another test worker may be creating it at the same moment: its existence is what counts.
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        + [UNPRIVILEGED_USER],
        capture_output=True,
        text=True,
    )
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise RuntimeError(f"useradd {UNPRIVILEGED_USER} failed: {made.stderr}") from None
    return UNPRIVILEGED_USER


class PgServer:
    """One throwaway cluster listening on 127.0.0.1:port (and a socket in its folder)."""

    def __init__(self, bin_dir: Path, root: Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.user = user
        self.port = 0
        self._names: Iterator[int] | None = None

    def _run(
        self, *args: str, timeout: float = START_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        made = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr or made.stdout}")
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=400"
                " -c full_page_writes=off -c synchronous_commit=off"
            )
            started = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-o",
                options,
                "start",
            )
            if started.returncode == 0:
                return
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{log[-2000:]}")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """One statement as the superuser, in autocommit (CREATE DATABASE needs it)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []

    def new_store(self) -> str:
        """The URL of a new, empty store: a role of its own, whose schema holds its tables."""
        if self._names is None:
            self.sql(f"CREATE DATABASE {STORES_DATABASE}")
            self._names = itertools.count(1)
        role = f"t{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE ROLE {role} LOGIN", STORES_DATABASE)
        self.sql(f"CREATE SCHEMA AUTHORIZATION {role}", STORES_DATABASE)
        return self.url(STORES_DATABASE, role)

    def cut_off(self, url: str) -> None:
        """An outage of one store: its role may no longer log in, and its sessions are ended."""
        role = _role(url)
        self.sql(f"ALTER ROLE {role} NOLOGIN")
        self.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")

    def restore(self, url: str) -> None:
        self.sql(f"ALTER ROLE {_role(url)} LOGIN")


def _role(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL cluster for this test session (started on first use, stopped at its end)."""
    bin_dir = pg_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="llmkit-pg-"))
    server = PgServer(bin_dir, root, server_user())
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def durable_backend(request: pytest.FixtureRequest) -> str:
    """Each backend of the durable store in turn."""
    return str(request.param)


@pytest.fixture
def durable_url(durable_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where this test's durable store is: a SQLite file path, or a new PostgreSQL database's
    URL. Opening it again (`open_durable`) is what another process on the same store does."""
    if durable_backend == "sqlite":
        return str(tmp_path / "data" / "durable.db")
    server: PgServer = request.getfixturevalue("pg_server")
    return server.new_store()


class Outage:
    """The durable store failing, on either backend, until `end()`: on PostgreSQL the database
    refuses connections and those open are ended (a server gone); on SQLite, which has no
    server to lose, `table` is renamed away, which SQLite also reports as an OperationalError."""

    def __init__(self, backend: str, url: str, server: PgServer | None) -> None:
        self.backend = backend
        self.url = url
        self.server = server
        self._sqlite: sqlite3.Connection | None = None
        self._table = ""
        # What the writer's health names as its last error meanwhile.
        self.error_name = "OperationalError" if backend == "sqlite" else "TransientDatabaseError"

    def begin(self, table: str = "run_log") -> None:
        if self.server is not None:
            self.server.cut_off(self.url)
            return
        self._table = table
        self._sqlite = sqlite3.connect(self.url, isolation_level=None)
        self._sqlite.execute(f"ALTER TABLE {table} RENAME TO {table}_away")

    def end(self) -> None:
        if self.server is not None:
            self.server.restore(self.url)
            return
        assert self._sqlite is not None
        self._sqlite.execute(f"ALTER TABLE {self._table}_away RENAME TO {self._table}")
        self._sqlite.close()
        self._sqlite = None


@pytest.fixture
def store_outage(
    durable_backend: str, durable_url: str, request: pytest.FixtureRequest
) -> Iterator[Outage]:
    """An outage of this test's durable store, begun and ended by the test (ended at its end
    in any case)."""
    server = request.getfixturevalue("pg_server") if durable_backend == "postgresql" else None
    outage = Outage(durable_backend, durable_url, server)
    yield outage
    if server is not None:
        server.restore(durable_url)
    elif outage._sqlite is not None:
        outage.end()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A SQLite store in a folder of its own (`sqlite_db.path`), closed afterwards: for what
    only SQLite has (its files and WAL, its pragmas and query plans, its data_version)."""
    database = Database(tmp_path / "sqlite" / "llmkit.db")
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def durable_db(durable_url: str) -> Iterator[DurableStore]:
    """The durable store at `durable_url`, closed afterwards."""
    db = open_durable(durable_url)
    try:
        yield db
    finally:
        db.close()
