"""The run log's tables: its migrations, on SQLite and on PostgreSQL.

The run log only ever migrates forward (it is durable, unlike the index): each migration is a
small function registered in order, and a migration copies columns as they were when it
shipped. The rollup tables are created and backfilled by `runlog_rollup`.
"""

from __future__ import annotations

import sqlite3

from llmkit import runlog_rollup
from llmkit.db import Connection, Migrations

# The columns whose percentiles stats() reads straight from an index of their own.
PERCENTILE_COLUMNS = ("latency_ms", "ttft_ms")
_RUN_LOG_INDEXES = (
    "run_log_created_at",
    "run_log_prompt_created_at",
    "run_log_latency_ms",
    "run_log_ttft_ms",
)
# The condition of the percentile indexes; a query repeats it word for word to use them.
NOT_JUDGE = "source != 'judge'"

MIGRATIONS = Migrations("runlog")
migration = MIGRATIONS.register


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE run_log (
            id INTEGER PRIMARY KEY,
            trace_id TEXT NOT NULL UNIQUE,
            prompt_key TEXT NOT NULL,
            version_number INTEGER,
            version_sha TEXT,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
            error TEXT,
            http_status INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost REAL,
            latency_ms INTEGER,
            ttft_ms INTEGER,
            stream INTEGER NOT NULL DEFAULT 0,
            api_key_id INTEGER,
            source TEXT NOT NULL CHECK (source IN ('api', 'ui', 'eval', 'cli')),
            created_at TEXT NOT NULL
        )
        """
    )
    _m001_indexes(conn)


def _m001_indexes(conn: Connection | sqlite3.Connection) -> None:
    """The first indexes, the same in both dialects."""
    conn.execute("CREATE INDEX run_log_created_at ON run_log (created_at)")
    conn.execute("CREATE INDEX run_log_prompt_created_at ON run_log (prompt_key, created_at)")
    # Percentiles read the value at a rank straight from these, without touching the table.
    for column in ("latency_ms", "ttft_ms"):
        conn.execute(
            f"CREATE INDEX run_log_{column} ON run_log"
            f" (prompt_key, version_number, version_sha, {column})"
        )


@migration
def m002_truncated_notes_and_rejects(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE run_log ADD COLUMN truncated TEXT")
    conn.execute("ALTER TABLE run_log ADD COLUMN log_notes TEXT")
    # Rows the database refused even scrubbed: kept with the error, never in the way.
    conn.execute(
        """
        CREATE TABLE run_log_rejects (
            id INTEGER PRIMARY KEY,
            trace_id TEXT,
            error TEXT NOT NULL,
            row TEXT NOT NULL,
            rejected_at TEXT NOT NULL
        )
        """
    )


@migration
def m003_drafts_marked(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE run_log ADD COLUMN draft INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE run_log ADD COLUMN draft_blob TEXT")
    # Drafts used to be logged under the number their commit would get, without a sha (a
    # committed version always has one): marked as drafts, they no longer count for that
    # number. Their text is unknown, so their blob stays null.
    conn.execute(
        "UPDATE run_log SET draft = 1, version_number = NULL"
        " WHERE version_sha IS NULL AND version_number IS NOT NULL"
    )
    # Each draft text is a version of its own in the per-version figures.
    for column in ("latency_ms", "ttft_ms"):
        conn.execute(f"DROP INDEX run_log_{column}")
        conn.execute(
            f"CREATE INDEX run_log_{column} ON run_log"
            f" (prompt_key, version_number, version_sha, draft, draft_blob, {column})"
        )


@migration
def m004_judge_source(conn: sqlite3.Connection) -> None:
    """Rows of the eval judge's calls (source "judge"). SQLite cannot change a CHECK in place,
    so the table is rebuilt (in the migration's one transaction: a kill leaves it either wholly
    old or wholly new). The percentile indexes leave judge rows out, as stats() does, so that a
    percentile is still read from its index alone."""
    conn.execute("ALTER TABLE run_log RENAME TO run_log_m003")
    for name in _RUN_LOG_INDEXES:
        conn.execute(f"DROP INDEX {name}")
    conn.execute(
        """
        CREATE TABLE run_log (
            id INTEGER PRIMARY KEY,
            trace_id TEXT NOT NULL UNIQUE,
            prompt_key TEXT NOT NULL,
            version_number INTEGER,
            version_sha TEXT,
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
            error TEXT,
            http_status INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            reasoning_tokens INTEGER,
            cost REAL,
            latency_ms INTEGER,
            ttft_ms INTEGER,
            stream INTEGER NOT NULL DEFAULT 0,
            api_key_id INTEGER,
            source TEXT NOT NULL CHECK (source IN ('api', 'ui', 'eval', 'cli', 'judge')),
            created_at TEXT NOT NULL,
            truncated TEXT,
            log_notes TEXT,
            draft INTEGER NOT NULL DEFAULT 0,
            draft_blob TEXT
        )
        """
    )
    # Spelled out: a migration copies the columns as they were when it shipped.
    columns = (
        "id, trace_id, prompt_key, version_number, version_sha, model, request, response,"
        " status, error, http_status, input_tokens, output_tokens, reasoning_tokens, cost,"
        " latency_ms, ttft_ms, stream, api_key_id, source, created_at, truncated, log_notes,"
        " draft, draft_blob"
    )
    conn.execute(f"INSERT INTO run_log ({columns}) SELECT {columns} FROM run_log_m003")
    conn.execute("DROP TABLE run_log_m003")
    conn.execute("CREATE INDEX run_log_created_at ON run_log (created_at)")
    conn.execute("CREATE INDEX run_log_prompt_created_at ON run_log (prompt_key, created_at)")
    _judgeless_percentile_indexes(conn)


def _judgeless_percentile_indexes(conn: Connection | sqlite3.Connection) -> None:
    """m004's percentile indexes, the same in both dialects: partial, without the judge's rows.
    `source` is in the index too: SQLite reads a column of a partial index's condition from the
    table unless the index holds it."""
    for column in PERCENTILE_COLUMNS:
        conn.execute(
            f"CREATE INDEX run_log_{column} ON run_log"
            f" (prompt_key, version_number, version_sha, draft, draft_blob, {column}, source)"
            f" WHERE {NOT_JUDGE}"
        )


@migration
def m005_ids_in_blocks_and_model_names(conn: sqlite3.Connection) -> None:
    """The counter ids are reserved from (see IdBlocks): one row, above every id so far. And
    the model as the call named it, beside what it resolved to."""
    conn.execute("ALTER TABLE run_log ADD COLUMN model_name TEXT")
    conn.execute(
        "CREATE TABLE run_log_ids (one INTEGER PRIMARY KEY CHECK (one = 1),"
        " next_id INTEGER NOT NULL)"
    )
    conn.execute("INSERT INTO run_log_ids SELECT 1, COALESCE(MAX(id), 0) + 1 FROM run_log")


@migration
def m006_rollups_and_filter_indexes(conn: Connection) -> None:
    """Per-version rollups, backfilled from every row already logged (see runlog_rollup), and
    the indexes that the model, status and version filters of a page (alone or with a prompt)
    need to read it newest first without scanning the log."""
    runlog_rollup.create_and_backfill(conn, runlog_rollup.CREATE_TABLES)
    _filter_indexes(conn)


def _filter_indexes(conn: Connection) -> None:
    conn.execute("CREATE INDEX run_log_model_created_at ON run_log (model, created_at)")
    conn.execute("CREATE INDEX run_log_status_created_at ON run_log (status, created_at)")
    conn.execute(
        "CREATE INDEX run_log_version_created_at"
        " ON run_log (prompt_key, version_number, created_at)"
    )
    conn.execute(
        "CREATE INDEX run_log_prompt_status_created_at ON run_log (prompt_key, status, created_at)"
    )


@MIGRATIONS.on_postgresql("m001_initial")
def m001_initial_postgresql(conn: Connection) -> None:
    # Text compared by range (trace id prefixes) or sorted (times) collates bytewise, as SQLite.
    conn.execute(
        """
        CREATE TABLE run_log (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            trace_id TEXT COLLATE "C" NOT NULL UNIQUE,
            prompt_key TEXT COLLATE "C" NOT NULL,
            version_number BIGINT,
            version_sha TEXT COLLATE "C",
            model TEXT NOT NULL,
            request TEXT NOT NULL,
            response TEXT,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'cancelled')),
            error TEXT,
            http_status BIGINT,
            input_tokens BIGINT,
            output_tokens BIGINT,
            reasoning_tokens BIGINT,
            cost DOUBLE PRECISION,
            latency_ms DOUBLE PRECISION,
            ttft_ms DOUBLE PRECISION,
            stream BIGINT NOT NULL DEFAULT 0,
            api_key_id BIGINT,
            source TEXT NOT NULL
                CONSTRAINT run_log_source CHECK (source IN ('api', 'ui', 'eval', 'cli')),
            created_at TEXT COLLATE "C" NOT NULL
        )
        """
    )
    _m001_indexes(conn)


@MIGRATIONS.on_postgresql("m002_truncated_notes_and_rejects")
def m002_truncated_notes_and_rejects_postgresql(conn: Connection) -> None:
    conn.execute("ALTER TABLE run_log ADD COLUMN truncated TEXT")
    conn.execute("ALTER TABLE run_log ADD COLUMN log_notes TEXT")
    conn.execute(
        """
        CREATE TABLE run_log_rejects (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            trace_id TEXT,
            error TEXT NOT NULL,
            row TEXT NOT NULL,
            rejected_at TEXT NOT NULL
        )
        """
    )


@MIGRATIONS.on_postgresql("m004_judge_source")
def m004_judge_source_postgresql(conn: Connection) -> None:
    """PostgreSQL changes the CHECK in place; the percentile indexes become partial, as above."""
    conn.execute(
        "ALTER TABLE run_log DROP CONSTRAINT run_log_source, ADD CONSTRAINT run_log_source"
        " CHECK (source IN ('api', 'ui', 'eval', 'cli', 'judge'))"
    )
    for column in PERCENTILE_COLUMNS:
        conn.execute(f"DROP INDEX run_log_{column}")
    _judgeless_percentile_indexes(conn)


@MIGRATIONS.on_postgresql("m005_ids_in_blocks_and_model_names")
def m005_ids_in_blocks_and_model_names_postgresql(conn: Connection) -> None:
    """As on SQLite, and one source of ids: a row inserted without one (by hand, an import)
    takes it from the counter too, under the counter row's lock, instead of from the identity
    sequence, which knows nothing of the blocks IdBlocks hands out."""
    conn.execute("ALTER TABLE run_log ADD COLUMN model_name TEXT")
    conn.execute(
        "CREATE TABLE run_log_ids (one BIGINT PRIMARY KEY CHECK (one = 1), next_id BIGINT NOT NULL)"
    )
    conn.execute("INSERT INTO run_log_ids SELECT 1, COALESCE(MAX(id), 0) + 1 FROM run_log")
    conn.execute(
        "CREATE FUNCTION run_log_next_id() RETURNS BIGINT LANGUAGE sql VOLATILE AS"
        " 'UPDATE run_log_ids SET next_id = next_id + 1 RETURNING next_id - 1'"
    )
    conn.execute("ALTER TABLE run_log ALTER COLUMN id DROP IDENTITY")
    conn.execute("ALTER TABLE run_log ALTER COLUMN id SET DEFAULT run_log_next_id()")


@MIGRATIONS.on_postgresql("m006_rollups_and_filter_indexes")
def m006_rollups_and_filter_indexes_postgresql(conn: Connection) -> None:
    """The rollup tables in PostgreSQL's types (times bytewise, as they are compared)."""
    runlog_rollup.create_and_backfill(conn, runlog_rollup.CREATE_TABLES_POSTGRESQL)
    _filter_indexes(conn)
