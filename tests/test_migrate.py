"""Every migration list, migrated into one fresh database and compared with one snapshot.

EXPECTED is the schema the code builds: every table's columns (name, type, NOT NULL, default,
position in the primary key) and indexes. A migration that changes a table changes this file
too, so the change is reviewed here as a whole. An old database (tests/data) must migrate
forward to the same schema without running again what it has recorded.
"""

from __future__ import annotations

import ast
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmkit import import_rows, index_schema, keys, runlog_schema
from llmkit.config import Settings
from llmkit.db import Database, Migrations, connect
from llmkit.evals import records
from llmkit.evals.records import EvalRecords
from llmkit.workspace import Workspace
from tests.helpers import Repo

ROOT = Path(__file__).resolve().parent.parent
OLD_DATABASE = ROOT / "tests" / "data" / "before_registry.sql"
LISTS = [
    index_schema.MIGRATIONS,
    runlog_schema.MIGRATIONS,
    keys.MIGRATIONS,
    records.MIGRATIONS,
    import_rows.MIGRATIONS,
]
# Lists that came after the old database in tests/data was written.
NEWER = [import_rows.MIGRATIONS]
WAIT_S = 30

Column = tuple[str, str, bool, str | None, int]
Table = dict[str, object]

# Columns: (name, type, NOT NULL, default as SQL text, position in the primary key or 0).
# Indexes: name -> how it was made and its columns ("CREATE INDEX" and "CREATE UNIQUE INDEX" are
# statements of their own; "UNIQUE" and "PRIMARY KEY" come from the table's constraints).
EXPECTED: dict[str, Table] = {
    "_migrations": {
        "columns": [
            ("kind", "TEXT", True, None, 1),
            ("name", "TEXT", True, None, 2),
            ("applied_at", "TEXT", True, "datetime('now')", 0),
        ],
        "indexes": {"sqlite_autoindex__migrations_1": ("PRIMARY KEY", ["kind", "name"])},
    },
    # -- index --------------------------------------------------------------------------
    "ix_commits": {
        "columns": [
            ("seq", "INTEGER", False, None, 1),
            ("sha", "TEXT", True, None, 0),
            ("author_name", "TEXT", True, None, 0),
            ("author_email", "TEXT", True, None, 0),
            ("authored_at", "INTEGER", True, None, 0),
            ("committed_at", "INTEGER", True, None, 0),
            ("message", "TEXT", True, None, 0),
        ],
        "indexes": {"sqlite_autoindex_ix_commits_1": ("UNIQUE", ["sha"])},
    },
    "ix_blobs": {
        "columns": [
            ("id", "TEXT", False, None, 1),
            ("content", "TEXT", False, None, 0),
            ("error", "TEXT", False, None, 0),
        ],
        "indexes": {"sqlite_autoindex_ix_blobs_1": ("PRIMARY KEY", ["id"])},
    },
    "ix_prompts": {
        "columns": [
            ("key", "TEXT", False, None, 1),
            ("id", "INTEGER", True, None, 0),
            ("path", "TEXT", True, None, 0),
            ("first_seq", "INTEGER", False, None, 0),
            ("present", "INTEGER", True, "0", 0),
        ],
        "indexes": {
            "sqlite_autoindex_ix_prompts_1": ("PRIMARY KEY", ["key"]),
            "sqlite_autoindex_ix_prompts_2": ("UNIQUE", ["id"]),
        },
    },
    "ix_versions": {
        "columns": [
            ("key", "TEXT", True, None, 1),
            ("number", "INTEGER", True, None, 2),
            ("seq", "INTEGER", False, None, 0),
            ("blob", "TEXT", True, None, 0),
            ("id", "INTEGER", False, None, 0),
        ],
        "indexes": {
            "sqlite_autoindex_ix_versions_1": ("PRIMARY KEY", ["key", "number"]),
            "ix_versions_seq": ("CREATE INDEX", ["seq"]),
            "ix_versions_id": ("CREATE UNIQUE INDEX", ["id"]),
        },
    },
    "ix_state": {
        "columns": [
            ("name", "TEXT", False, None, 1),
            ("value", "TEXT", False, None, 0),
        ],
        "indexes": {"sqlite_autoindex_ix_state_1": ("PRIMARY KEY", ["name"])},
    },
    "ix_generation": {
        "columns": [
            ("id", "INTEGER", False, None, 1),
            ("generation", "INTEGER", True, None, 0),
        ],
        "indexes": {},
    },
    # -- runlog -------------------------------------------------------------------------
    "run_log": {
        "columns": [
            ("id", "INTEGER", False, None, 1),
            ("trace_id", "TEXT", True, None, 0),
            ("prompt_key", "TEXT", True, None, 0),
            ("version_number", "INTEGER", False, None, 0),
            ("version_sha", "TEXT", False, None, 0),
            ("model", "TEXT", True, None, 0),
            ("request", "TEXT", True, None, 0),
            ("response", "TEXT", False, None, 0),
            ("status", "TEXT", True, None, 0),
            ("error", "TEXT", False, None, 0),
            ("http_status", "INTEGER", False, None, 0),
            ("input_tokens", "INTEGER", False, None, 0),
            ("output_tokens", "INTEGER", False, None, 0),
            ("reasoning_tokens", "INTEGER", False, None, 0),
            ("cost", "REAL", False, None, 0),
            ("latency_ms", "INTEGER", False, None, 0),
            ("ttft_ms", "INTEGER", False, None, 0),
            ("stream", "INTEGER", True, "0", 0),
            ("api_key_id", "INTEGER", False, None, 0),
            ("source", "TEXT", True, None, 0),
            ("created_at", "TEXT", True, None, 0),
            ("truncated", "TEXT", False, None, 0),
            ("log_notes", "TEXT", False, None, 0),
            ("draft", "INTEGER", True, "0", 0),
            ("draft_blob", "TEXT", False, None, 0),
            ("model_name", "TEXT", False, None, 0),
        ],
        "indexes": {
            "sqlite_autoindex_run_log_1": ("UNIQUE", ["trace_id"]),
            "run_log_created_at": ("CREATE INDEX", ["created_at"]),
            "run_log_prompt_created_at": ("CREATE INDEX", ["prompt_key", "created_at"]),
            "run_log_model_created_at": ("CREATE INDEX", ["model", "created_at"]),
            "run_log_status_created_at": ("CREATE INDEX", ["status", "created_at"]),
            "run_log_version_created_at": (
                "CREATE INDEX",
                ["prompt_key", "version_number", "created_at"],
            ),
            "run_log_prompt_status_created_at": (
                "CREATE INDEX",
                ["prompt_key", "status", "created_at"],
            ),
            "run_log_latency_ms": (
                "CREATE INDEX WHERE",  # source != 'judge'
                [
                    "prompt_key",
                    "version_number",
                    "version_sha",
                    "draft",
                    "draft_blob",
                    "latency_ms",
                    "source",
                ],
            ),
            "run_log_ttft_ms": (
                "CREATE INDEX WHERE",  # source != 'judge'
                [
                    "prompt_key",
                    "version_number",
                    "version_sha",
                    "draft",
                    "draft_blob",
                    "ttft_ms",
                    "source",
                ],
            ),
        },
    },
    "run_log_rejects": {
        "columns": [
            ("id", "INTEGER", False, None, 1),
            ("trace_id", "TEXT", False, None, 0),
            ("error", "TEXT", True, None, 0),
            ("row", "TEXT", True, None, 0),
            ("rejected_at", "TEXT", True, None, 0),
        ],
        "indexes": {},
    },
    "run_log_ids": {
        "columns": [
            ("one", "INTEGER", False, None, 1),
            ("next_id", "INTEGER", True, None, 0),
        ],
        "indexes": {},
    },
    "run_log_totals": {
        "columns": [
            ("prompt_key", "TEXT", True, None, 1),
            ("version_key", "TEXT", True, None, 2),
            ("model", "TEXT", True, None, 3),
            ("status", "TEXT", True, None, 4),
            ("source", "TEXT", True, None, 5),
            ("version_number", "INTEGER", False, None, 0),
            ("version_sha", "TEXT", False, None, 0),
            ("draft", "INTEGER", True, None, 0),
            ("draft_blob", "TEXT", False, None, 0),
            ("n", "INTEGER", True, None, 0),
            ("latency_n", "INTEGER", True, None, 0),
            ("ttft_n", "INTEGER", True, None, 0),
            ("input_tokens", "INTEGER", True, None, 0),
            ("output_tokens", "INTEGER", True, None, 0),
            ("reasoning_tokens", "INTEGER", True, None, 0),
            ("cost", "REAL", False, None, 0),
            ("first_at", "TEXT", True, None, 0),
            ("last_at", "TEXT", True, None, 0),
        ],
        "indexes": {
            "sqlite_autoindex_run_log_totals_1": (
                "PRIMARY KEY",
                ["prompt_key", "version_key", "model", "status", "source"],
            ),
        },
    },
    "run_log_counts": {
        "columns": [
            ("model", "TEXT", True, None, 1),
            ("status", "TEXT", True, None, 2),
            ("n", "INTEGER", True, None, 0),
        ],
        "indexes": {
            "sqlite_autoindex_run_log_counts_1": ("PRIMARY KEY", ["model", "status"]),
        },
    },
    "run_log_latency": {
        "columns": [
            ("prompt_key", "TEXT", True, None, 1),
            ("version_key", "TEXT", True, None, 2),
            ("metric", "TEXT", True, None, 3),
            ("bucket", "INTEGER", True, None, 4),
            ("n", "INTEGER", True, None, 0),
        ],
        "indexes": {
            "sqlite_autoindex_run_log_latency_1": (
                "PRIMARY KEY",
                ["prompt_key", "version_key", "metric", "bucket"],
            ),
        },
    },
    # -- keys ---------------------------------------------------------------------------
    "api_keys": {
        "columns": [
            ("id", "INTEGER", False, None, 1),
            ("name", "TEXT", True, None, 0),
            ("scope", "TEXT", True, None, 0),
            ("digest", "TEXT", True, None, 0),
            ("prefix", "TEXT", True, None, 0),
            ("created_at", "TEXT", True, None, 0),
            ("last_used_at", "TEXT", False, None, 0),
            ("revoked_at", "TEXT", False, None, 0),
        ],
        "indexes": {"api_keys_digest": ("CREATE UNIQUE INDEX", ["digest"])},
    },
    "api_keys_generation": {
        "columns": [
            ("id", "INTEGER", False, None, 1),
            ("generation", "INTEGER", True, None, 0),
        ],
        "indexes": {},
    },
    "sessions": {
        "columns": [
            ("id", "INTEGER", False, None, 1),
            ("digest", "TEXT", True, None, 0),
            ("key_id", "INTEGER", True, None, 0),
            ("created_at", "REAL", True, None, 0),
            ("last_seen_at", "REAL", True, None, 0),
            ("client", "TEXT", False, None, 0),
            ("user_agent", "TEXT", False, None, 0),
        ],
        "indexes": {
            "sessions_digest": ("CREATE UNIQUE INDEX", ["digest"]),
            "sessions_key_id": ("CREATE INDEX", ["key_id"]),
        },
    },
    # -- evals --------------------------------------------------------------------------
    "eval_runs": {
        "columns": [
            ("run_id", "TEXT", False, None, 1),
            ("started_at", "TEXT", True, None, 0),
            ("finished_at", "TEXT", False, None, 0),
            ("ref", "TEXT", False, None, 0),
            ("base_ref", "TEXT", False, None, 0),
            ("source", "TEXT", True, None, 0),
            ("summary", "TEXT", False, None, 0),
        ],
        "indexes": {"sqlite_autoindex_eval_runs_1": ("PRIMARY KEY", ["run_id"])},
    },
    "eval_results": {
        "columns": [
            ("id", "INTEGER", False, None, 1),
            ("run_id", "TEXT", True, None, 0),
            ("role", "TEXT", True, "'after'", 0),
            ("prompt_key", "TEXT", True, None, 0),
            ("version_number", "INTEGER", False, None, 0),
            ("version_sha", "TEXT", False, None, 0),
            ("case_name", "TEXT", True, None, 0),
            ("file", "TEXT", False, None, 0),
            ("model", "TEXT", True, None, 0),
            ("repeat_index", "INTEGER", True, None, 0),
            ("passed", "INTEGER", True, None, 0),
            ("output", "TEXT", False, None, 0),
            ("assertions", "TEXT", True, None, 0),
            ("error", "TEXT", False, None, 0),
            ("latency_ms", "REAL", False, None, 0),
            ("input_tokens", "INTEGER", False, None, 0),
            ("output_tokens", "INTEGER", False, None, 0),
            ("cost", "REAL", False, None, 0),
            ("cached", "INTEGER", True, None, 0),
            ("human_score", "INTEGER", False, None, 0),
            ("created_at", "TEXT", True, None, 0),
            ("draft", "INTEGER", True, "0", 0),
            ("draft_blob", "TEXT", False, None, 0),
            ("updated_at", "TEXT", False, None, 0),
        ],
        "indexes": {
            "eval_results_version": ("CREATE INDEX", ["prompt_key", "version_sha"]),
            "eval_results_run": ("CREATE INDEX", ["run_id"]),
            "eval_results_prompt_runs": (
                "CREATE INDEX",
                [
                    "prompt_key",
                    "run_id",
                    "role",
                    "passed",
                    "human_score",
                    "version_number",
                    "version_sha",
                    "draft",
                    "draft_blob",
                    "created_at",
                ],
            ),
        },
    },
    "response_cache": {
        "columns": [
            ("key", "TEXT", False, None, 1),
            ("model", "TEXT", True, None, 0),
            ("response", "TEXT", True, None, 0),
            ("latency_ms", "REAL", False, None, 0),
            ("created_at", "TEXT", True, None, 0),
        ],
        "indexes": {"sqlite_autoindex_response_cache_1": ("PRIMARY KEY", ["key"])},
    },
    # -- import_llmkit (what `llmkit import-llmkit` made of each LLMKit row) --------------
    "import_llmkit": {
        "columns": [
            ("source", "TEXT", True, None, 1),
            ("kind", "TEXT", True, None, 2),
            ("llmkit_id", "TEXT", True, None, 3),
            ("target", "TEXT", True, None, 0),
            ("imported_at", "TEXT", True, None, 0),
        ],
        "indexes": {
            "sqlite_autoindex_import_llmkit_1": ("PRIMARY KEY", ["source", "kind", "llmkit_id"])
        },
    },
}

# Trigger -> its table. Revoking or deleting a key bumps api_keys_generation through these,
# which is how other processes learn to drop their cached keys.
EXPECTED_TRIGGERS = {"api_keys_revoked": "api_keys", "api_keys_deleted": "api_keys"}

_INDEX_ORIGINS = {"c": "CREATE INDEX", "u": "UNIQUE", "pk": "PRIMARY KEY"}


def schema(conn: sqlite3.Connection) -> dict[str, Table]:
    """The snapshot of every table in `conn`'s database, in EXPECTED's shape."""
    tables = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {
        table: {"columns": columns(conn, table), "indexes": indexes(conn, table)}
        for table in tables
    }


def columns(conn: sqlite3.Connection, table: str) -> list[Column]:
    return [
        (row["name"], row["type"], bool(row["notnull"]), row["dflt_value"], row["pk"])
        for row in conn.execute(f"PRAGMA table_info({table})")
    ]


def indexes(conn: sqlite3.Connection, table: str) -> dict[str, tuple[str, list[str]]]:
    found = {}
    for row in conn.execute(f"PRAGMA index_list({table})"):
        how = _INDEX_ORIGINS[row["origin"]]
        if how == "CREATE INDEX" and row["unique"]:
            how = "CREATE UNIQUE INDEX"
        if row["partial"]:
            how += " WHERE"
        names = [info["name"] for info in conn.execute(f"PRAGMA index_info({row['name']})")]
        found[row["name"]] = (how, names)
    return found


def triggers(conn: sqlite3.Connection) -> dict[str, str]:
    query = "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
    return {name: table for name, table in conn.execute(query)}


def recorded(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    query = "SELECT kind, name, applied_at FROM _migrations ORDER BY rowid"
    return [tuple(row) for row in conn.execute(query)]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "llmkit.db")
    yield database
    database.close()


def test_a_fresh_database_migrates_to_the_expected_schema(db: Database) -> None:
    for migrations in LISTS:
        assert db.migrate(migrations) == migrations.names
    conn = db.reader()
    assert schema(conn) == EXPECTED
    assert triggers(conn) == EXPECTED_TRIGGERS
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'").fetchall() == []


def test_the_recorded_migrations_are_the_registered_ones_in_order(db: Database) -> None:
    for migrations in LISTS:
        db.migrate(migrations)
    registered = [(m.kind, name) for m in LISTS for name in m.names]
    assert [(kind, name) for kind, name, _ in recorded(db.reader())] == registered
    for migrations in LISTS:
        assert db.migrate(migrations) == []
    assert len(recorded(db.reader())) == len(registered)


def test_every_migration_list_in_llmkit_is_in_the_snapshot() -> None:
    """A new list (a new kind of durable table) is declared with Migrations("kind"): this finds
    every declaration in the package, so a list cannot miss the snapshot above."""
    kinds: list[str] = []
    for path in sorted((ROOT / "llmkit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name == "Migrations":
                kind = node.args[0] if node.args else None
                assert isinstance(kind, ast.Constant) and isinstance(kind.value, str), path
                kinds.append(kind.value)
    assert sorted(kinds) == sorted(m.kind for m in LISTS)
    assert len(set(kinds)) == len(kinds), f"two lists share a kind: {kinds}"


def load_old_database(path: Path) -> list[tuple[str, str, str]]:
    """Write the database an older llmkit left at `path`; returns what it had recorded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(OLD_DATABASE.read_text("utf-8"))
        return recorded(conn)
    finally:
        conn.close()


def test_a_database_from_before_the_registry_migrates_forward_without_rerunning(
    repo: Repo,
) -> None:
    settings = Settings.resolve(repo.root)
    old = load_old_database(settings.db_path)
    assert {kind for kind, _, _ in old} == {m.kind for m in LISTS if m not in NEWER}
    for migrations in LISTS:
        # What a database recorded must stay the start of its list, in the same order.
        names = [name for kind, name, _ in old if kind == migrations.kind]
        assert migrations.names[: len(names)] == names

    ws = Workspace(settings)
    try:
        # Opening runs only what the old database has not recorded; a migration that ran
        # again would fail on its CREATE TABLE and stop the open.
        log, key_store, evals = ws.runlog, ws.keys, EvalRecords(ws.db)
        for migrations in NEWER:
            ws.db.migrate(migrations)  # as the feature that owns them does on first use
        conn = ws.db.reader()
        now = recorded(conn)
        assert now[: len(old)] == old
        done = {(kind, name) for kind, name, _ in old}
        assert [(k, n) for k, n, _ in now[len(old) :]] == [
            (m.kind, name) for m in LISTS for name in m.names if (m.kind, name) not in done
        ]
        assert schema(conn) == EXPECTED
        assert triggers(conn) == EXPECTED_TRIGGERS

        # Every durable row is still there and reads back through today's code.
        row = log.get("trace-before")
        assert row is not None
        assert (row["prompt_key"], row["response"], row["truncated"]) == ("greet", "user: hi", [])
        assert [(k.name, k.prefix) for k in key_store.list()] == [("deploy", "llmkit_abcde")]
        results = evals.results(run_id="run-before")
        assert [(r["case_name"], r["human_score"]) for r in results] == [("says hi", 4)]
        assert evals.cached("k") == ({}, None)

        # The index (empty in the old file) fills from git as usual.
        ws.index.sync()
        assert sorted(p.key for p in ws.index.list_prompts()) == ["hello", "static"]
    finally:
        ws.close()


def test_an_older_list_migrates_forward_to_the_rest(db: Database) -> None:
    last = runlog_schema.MIGRATIONS.names[-1]
    first = db.migrate(runlog_schema.MIGRATIONS, stop_before=last)
    assert first == runlog_schema.MIGRATIONS.names[:-1]
    assert db.migrate(runlog_schema.MIGRATIONS) == [last]
    assert db.migrate(runlog_schema.MIGRATIONS) == []


def test_two_connections_migrating_at_once_run_each_migration_once(tmp_path: Path) -> None:
    """The second connection reads what ran, waits for the first's write transaction, and must
    then see that the first already ran the migration (as two processes opening one file)."""
    path = tmp_path / "llmkit.db"
    calls: list[str] = []
    inside, release, second_waits = threading.Event(), threading.Event(), threading.Event()
    migrations = Migrations("race")

    @migrations.register
    def m001_slow(conn: sqlite3.Connection) -> None:
        calls.append(f"m001 by {threading.current_thread().name}")
        conn.execute("CREATE TABLE raced (id INTEGER PRIMARY KEY)")
        inside.set()
        assert release.wait(WAIT_S), "the test never released the first migration"

    @migrations.register
    def m002_more(conn: sqlite3.Connection) -> None:
        calls.append(f"m002 by {threading.current_thread().name}")
        conn.execute("ALTER TABLE raced ADD COLUMN note TEXT")

    applied: dict[str, list[str]] = {}
    errors: list[Exception] = []

    def open_and_migrate(name: str, conn: sqlite3.Connection) -> None:
        try:
            applied[name] = migrations.apply(conn)
        except Exception as exc:
            errors.append(exc)
        finally:
            conn.close()

    first_conn, second_conn = connect(path), connect(path)
    second_conn.set_trace_callback(
        lambda sql: second_waits.set() if sql.startswith("BEGIN IMMEDIATE") else None
    )
    first = threading.Thread(target=open_and_migrate, args=("first", first_conn), name="first")
    second = threading.Thread(target=open_and_migrate, args=("second", second_conn), name="second")
    first.start()
    try:
        assert inside.wait(WAIT_S)
        second.start()
        # The second has read the empty record and is asking for the write lock.
        assert second_waits.wait(WAIT_S)
    finally:
        release.set()
        for thread in (first, second):
            if thread.ident is not None:  # started
                thread.join(WAIT_S)
    assert errors == []
    assert calls[0] == "m001 by first"
    assert [call.split(" by ")[0] for call in calls] == ["m001", "m002"]
    assert applied["first"][0] == "m001_slow"
    assert sorted(applied["first"] + applied["second"]) == ["m001_slow", "m002_more"]
    check = connect(path)
    try:
        assert [name for kind, name, _ in recorded(check)] == ["m001_slow", "m002_more"]
    finally:
        check.close()


def test_an_up_to_date_database_opens_while_another_process_writes(
    db: Database, tmp_path: Path
) -> None:
    """Finding nothing to run takes no write lock, so an open never waits behind a long write
    (here it would fail at once: this connection does not wait at all)."""
    for migrations in LISTS:
        db.migrate(migrations)
    writer, opener = connect(tmp_path / "llmkit.db"), connect(tmp_path / "llmkit.db")
    try:
        writer.execute("BEGIN IMMEDIATE")
        opener.execute("PRAGMA busy_timeout=0")
        assert [migrations.apply(opener) for migrations in LISTS] == [[]] * len(LISTS)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            opener.execute("BEGIN IMMEDIATE")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        opener.close()


def test_a_migration_that_fails_leaves_nothing_behind_and_runs_at_the_next_open(
    db: Database,
) -> None:
    migrations = Migrations("flaky")
    attempts: list[int] = []

    @migrations.register
    def m001_table(conn: sqlite3.Connection) -> None:
        attempts.append(1)
        conn.execute("CREATE TABLE flaky (id INTEGER PRIMARY KEY)")
        if len(attempts) == 1:
            raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError):
        db.migrate(migrations)
    conn = db.reader()
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert db.migrate(migrations) == ["m001_table"]
    assert [name for _, name, _ in recorded(conn)] == ["m001_table"]


KILLED_MIGRATION = """
import sqlite3, sys, time
from llmkit.db import Migrations, connect

migrations = Migrations("killed")

@migrations.register
def m001_table(conn):
    conn.execute("CREATE TABLE killed (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO killed (id) VALUES (1)")
    print("inside", flush=True)
    time.sleep(60)

migrations.apply(connect(sys.argv[1]))
"""


def test_a_kill_during_a_migration_leaves_it_to_run_at_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "llmkit.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MIGRATION, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "inside"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(WAIT_S)
    assert proc.returncode == -signal.SIGKILL

    migrations = Migrations("killed")

    @migrations.register
    def m001_table(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE killed (id INTEGER PRIMARY KEY)")

    db = Database(path)
    try:
        assert db.migrate(migrations) == ["m001_table"]
        conn = db.reader()
        assert conn.execute("SELECT COUNT(*) FROM killed").fetchone()[0] == 0
        assert [(kind, name) for kind, name, _ in recorded(conn)] == [("killed", "m001_table")]
    finally:
        db.close()


def test_a_migration_out_of_its_place_is_refused_when_declared() -> None:
    migrations = Migrations("sample")

    def m002_second(conn: sqlite3.Connection) -> None:
        pass

    def create_things(conn: sqlite3.Connection) -> None:
        pass

    for fn in (m002_second, create_things):
        with pytest.raises(ValueError) as info:
            migrations.register(fn)
        assert fn.__name__ in str(info.value) and "m001_" in str(info.value)
    assert migrations.names == []


def test_stopping_before_an_unknown_migration_is_refused(db: Database) -> None:
    with pytest.raises(ValueError) as info:
        db.migrate(runlog_schema.MIGRATIONS, stop_before="m009_nothing")
    assert "m009_nothing" in str(info.value) and "runlog" in str(info.value)
    conn = db.reader()
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'run_log'").fetchall() == []
