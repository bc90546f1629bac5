"""The index's tables. Only index tables are in the `index` migration list: the index can be
dropped and rebuilt from git at any time, while durable tables (keys, run log, evals) have
lists of their own and are never touched here.
"""

from __future__ import annotations

import sqlite3

from llmkit.db import Migrations, run_script

MIGRATIONS = Migrations("index")
migration = MIGRATIONS.register


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        CREATE TABLE ix_commits (
            seq INTEGER PRIMARY KEY,
            sha TEXT NOT NULL UNIQUE,
            author_name TEXT NOT NULL,
            author_email TEXT NOT NULL,
            authored_at INTEGER NOT NULL,
            committed_at INTEGER NOT NULL,
            message TEXT NOT NULL
        );
        CREATE TABLE ix_blobs (
            id TEXT PRIMARY KEY,
            content TEXT,
            error TEXT
        );
        CREATE TABLE ix_prompts (
            key TEXT PRIMARY KEY,
            id INTEGER NOT NULL UNIQUE,
            path TEXT NOT NULL,
            first_seq INTEGER,
            present INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE ix_versions (
            key TEXT NOT NULL,
            number INTEGER NOT NULL,
            seq INTEGER,
            blob TEXT NOT NULL,
            PRIMARY KEY (key, number)
        );
        CREATE INDEX ix_versions_seq ON ix_versions (seq);
        CREATE TABLE ix_state (
            name TEXT PRIMARY KEY,
            value TEXT
        );
        """,
    )


@migration
def m002_generation(conn: sqlite3.Connection) -> None:
    # Not one of INDEX_TABLES: a rebuild bumps it instead of deleting it, so every process that
    # cached what the index served sees that the rows changed under it.
    run_script(
        conn,
        """
        CREATE TABLE ix_generation (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            generation INTEGER NOT NULL
        );
        INSERT INTO ix_generation (id, generation) VALUES (1, 0);
        """,
    )


@migration
def m003_version_ids(conn: sqlite3.Connection) -> None:
    # Every committed version gets a global integer id (LLMKit's `version_id`), an ordinal in
    # commit order (seq, then key); drafts have none. Rows indexed before this migration are
    # numbered here exactly as a rebuild would number them.
    run_script(
        conn,
        """
        ALTER TABLE ix_versions ADD COLUMN id INTEGER;
        CREATE UNIQUE INDEX ix_versions_id ON ix_versions (id);
        """,
    )
    rows = conn.execute(
        "SELECT key, number FROM ix_versions WHERE seq IS NOT NULL ORDER BY seq, key, number"
    ).fetchall()
    conn.executemany(
        "UPDATE ix_versions SET id = ? WHERE key = ? AND number = ?",
        [(i, key, number) for i, (key, number) in enumerate(rows, start=1)],
    )


INDEX_TABLES = ("ix_commits", "ix_blobs", "ix_prompts", "ix_versions", "ix_state")


def read_generation(conn: sqlite3.Connection) -> int:
    """The index's generation: moved by every write transaction that changed a row."""
    return int(conn.execute("SELECT generation FROM ix_generation WHERE id = 1").fetchone()[0])
