"""Durable eval records: runs, per-case results with human scores, and the response cache.

These tables belong to the `evals` migration list. They refer to prompts by key and version
sha, never by index ids, so an index rebuild leaves them intact.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from llmkit.db import Database, Migrations, run_script
from llmkit.errors import BadRequest, NotFound
from llmkit.evals.results import CaseResult
from llmkit.runlog import utc_now

MIGRATIONS = Migrations("evals")
migration = MIGRATIONS.register


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        CREATE TABLE eval_runs (
            run_id TEXT PRIMARY KEY,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            ref TEXT,
            base_ref TEXT,
            source TEXT NOT NULL,
            summary TEXT
        );
        CREATE TABLE eval_results (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES eval_runs (run_id),
            role TEXT NOT NULL DEFAULT 'after',
            prompt_key TEXT NOT NULL,
            version_number INTEGER,
            version_sha TEXT,
            case_name TEXT NOT NULL,
            file TEXT,
            model TEXT NOT NULL,
            repeat_index INTEGER NOT NULL,
            passed INTEGER NOT NULL,
            output TEXT,
            assertions TEXT NOT NULL,
            error TEXT,
            latency_ms REAL,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cost REAL,
            cached INTEGER NOT NULL,
            human_score INTEGER,
            created_at TEXT NOT NULL
        );
        CREATE INDEX eval_results_version ON eval_results (prompt_key, version_sha);
        CREATE INDEX eval_results_run ON eval_results (run_id);
        CREATE TABLE response_cache (
            key TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            response TEXT NOT NULL,
            latency_ms REAL,
            created_at TEXT NOT NULL
        );
        """,
    )


@migration
def m002_drafts_marked(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE eval_results ADD COLUMN draft INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE eval_results ADD COLUMN draft_blob TEXT")
    # Results of a draft used to carry the number its commit would get, without a sha (a
    # committed version always has one): marked as drafts, they no longer count for it.
    conn.execute(
        "UPDATE eval_results SET draft = 1, version_number = NULL"
        " WHERE version_sha IS NULL AND version_number IS NOT NULL"
    )


@migration
def m003_results_updated_at(conn: sqlite3.Connection) -> None:
    """When a result last changed (a human score); null until then, read as its creation."""
    conn.execute("ALTER TABLE eval_results ADD COLUMN updated_at TEXT")


def cache_key(
    model: str, messages: list[dict[str, Any]], params: dict[str, Any], api_base: str | None
) -> str:
    """Same model, messages and parameters -> same key."""
    payload = json.dumps(
        [model, api_base, messages, params], sort_keys=True, ensure_ascii=False, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class EvalRecords:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(MIGRATIONS)

    # -- cache ---------------------------------------------------------------------------

    def cached(self, key: str) -> tuple[dict[str, Any], float | None] | None:
        row = (
            self.db.reader()
            .execute("SELECT response, latency_ms FROM response_cache WHERE key = ?", (key,))
            .fetchone()
        )
        return (json.loads(row[0]), row[1]) if row else None

    def remember(self, entries: list[tuple[str, str, dict[str, Any], float | None]]) -> None:
        if not entries:
            return
        now = utc_now()
        with self.db.write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO response_cache (key, model, response, latency_ms, "
                "created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(k, model, json.dumps(resp), latency, now) for k, model, resp, latency in entries],
            )

    # -- runs ----------------------------------------------------------------------------

    def save_run(
        self,
        results: list[CaseResult],
        base_results: list[CaseResult] | None = None,
        *,
        ref: str | None = None,
        base_ref: str | None = None,
        source: str = "cli",
        summary: dict[str, Any] | None = None,
        started_at: str | None = None,
    ) -> str:
        """Store a whole run (and its base-ref results) in one transaction; returns run_id."""
        run_id = uuid.uuid4().hex
        now = utc_now()
        rows = [_row(run_id, "after", r, now) for r in results]
        rows += [_row(run_id, "before", r, now) for r in base_results or []]
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO eval_runs (run_id, started_at, finished_at, ref, base_ref, source, "
                "summary)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    started_at or now,
                    now,
                    ref,
                    base_ref,
                    source,
                    json.dumps(summary) if summary else None,
                ),
            )
            conn.executemany(
                "INSERT INTO eval_results (run_id, role, prompt_key, version_number, version_sha,"
                " draft, draft_blob, case_name, file, model, repeat_index, passed, output,"
                " assertions, error, latency_ms, input_tokens, output_tokens, cost, cached,"
                " created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return run_id

    def results(
        self,
        *,
        run_id: str | None = None,
        prompt_key: str | None = None,
        version_sha: str | None = None,
        draft_blob: str | None = None,
    ) -> list[dict[str, Any]]:
        """The results of a run, a prompt, a commit or a draft's text (the "after" side)."""
        where, args = ["role = 'after'"], []
        filters = (
            ("run_id", run_id),
            ("prompt_key", prompt_key),
            ("version_sha", version_sha),
            ("draft_blob", draft_blob),
        )
        for column, value in filters:
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = (
            self.db.reader()
            .execute(f"SELECT * FROM eval_results WHERE {' AND '.join(where)} ORDER BY id", args)
            .fetchall()
        )
        return [_public(row) for row in rows]

    def result(self, result_id: int) -> dict[str, Any]:
        _check_result_id(result_id)
        row = (
            self.db.reader()
            .execute("SELECT * FROM eval_results WHERE id = ?", (result_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"No eval run result with id {result_id}", param="id")
        return _public(row)

    def set_score(self, result_id: int, score: Any) -> dict[str, Any]:
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise BadRequest(
                f"score must be a whole number from 1 to 5, got {score!r}", param="score"
            )
        _check_result_id(result_id)
        with self.db.write() as conn:
            changed = conn.execute(
                "UPDATE eval_results SET human_score = ?, updated_at = ? WHERE id = ?",
                (score, utc_now(), result_id),
            ).rowcount
        if not changed:
            raise NotFound(f"No eval run result with id {result_id}", param="id")
        return self.result(result_id)

    def performance(self, prompt_key: str) -> list[dict[str, Any]]:
        """Per version: runs, pass rate, mean human score (versions with no scores included)."""
        rows = (
            self.db.reader()
            .execute(
                "SELECT version_number, version_sha, draft, draft_blob, COUNT(*) AS results,"
                " COUNT(DISTINCT run_id) AS runs, AVG(passed) AS pass_rate,"
                " AVG(human_score) AS mean_score, COUNT(human_score) AS scored,"
                " MAX(created_at) AS last_run_at"
                " FROM eval_results WHERE prompt_key = ? AND role = 'after'"
                " GROUP BY version_sha, version_number, draft, draft_blob"
                " ORDER BY draft, version_number, version_sha, draft_blob",
                (prompt_key,),
            )
            .fetchall()
        )
        return [
            {
                "version_number": r["version_number"],
                "version_id": r["version_sha"],
                "draft": bool(r["draft"]),
                "draft_blob": r["draft_blob"],
                "run_count": r["runs"],
                "result_count": r["results"],
                "pass_rate": r["pass_rate"],
                "avg_score": r["mean_score"],
                "scored_count": r["scored"],
                "last_run_at": r["last_run_at"],
            }
            for r in rows
        ]


@dataclass(frozen=True)
class StoredResult:
    """A result row that did not come from a run here (an import from LLMKit), with its own
    time and human score. It has no assertions: it passed if it produced an output."""

    prompt_key: str
    version_number: int | None
    version_sha: str | None
    case_name: str
    file: str | None
    model: str
    repeat_index: int
    output: str | None
    created_at: str
    human_score: int | None = None
    passed: bool = True


def insert_run(
    conn: sqlite3.Connection,
    run_id: str,
    *,
    started_at: str,
    finished_at: str | None,
    source: str,
    ref: str | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """One eval_runs row, inside the caller's transaction (so it can record more beside it)."""
    conn.execute(
        "INSERT INTO eval_runs (run_id, started_at, finished_at, ref, base_ref, source, summary)"
        " VALUES (?, ?, ?, ?, NULL, ?, ?)",
        (run_id, started_at, finished_at, ref, source, json.dumps(summary) if summary else None),
    )


def insert_results(conn: sqlite3.Connection, run_id: str, results: list[StoredResult]) -> list[int]:
    """eval_results rows of a run, inside the caller's transaction; returns their ids."""
    ids = []
    for r in results:
        cursor = conn.execute(
            "INSERT INTO eval_results (run_id, role, prompt_key, version_number, version_sha,"
            " case_name, file, model, repeat_index, passed, output, assertions, cached,"
            " human_score, created_at) VALUES (?, 'after', ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', 0, ?, "
            "?)",
            (
                run_id,
                r.prompt_key,
                r.version_number,
                r.version_sha,
                r.case_name,
                r.file,
                r.model,
                r.repeat_index,
                int(r.passed),
                r.output,
                r.human_score,
                r.created_at,
            ),
        )
        ids.append(int(cursor.lastrowid or 0))
    return ids


def _check_result_id(result_id: int) -> None:
    # SQLite cannot even compare a larger integer, so no row can have it.
    if not -(2**63) <= result_id < 2**63:
        raise NotFound(f"No eval run result with id {result_id}", param="id")


def _row(run_id: str, role: str, r: CaseResult, now: str) -> tuple[Any, ...]:
    o = r.outcome
    return (
        run_id,
        role,
        r.prompt_key,
        r.version_number,
        r.version_sha,
        int(r.draft_blob is not None),
        r.draft_blob,
        r.case_name,
        r.file,
        r.model,
        r.repeat_index,
        int(r.passed),
        o.text,
        json.dumps([asdict(a) for a in r.assertions]),
        o.error,
        o.latency_ms,
        o.input_tokens,
        o.output_tokens,
        o.cost,
        int(r.cached),
        now,
    )


def _public(row: sqlite3.Row) -> dict[str, Any]:
    """A result with, beside ours, LLMKit's names for a `prompt_eval_run`: its case's name as
    `prompt_eval_name`, the human score as `score`, `updated_at`. `prompt_version_id` is the
    version's sha here; the API, which reads the cases and the index, adds the case's id as
    `prompt_eval_id` and makes `prompt_version_id` the version's integer id."""
    data = dict(row)
    data["assertions"] = json.loads(data["assertions"])
    data["passed"] = bool(data["passed"])
    data["cached"] = bool(data["cached"])
    data["draft"] = bool(data["draft"])
    data["score"] = data["human_score"]
    data["prompt_version_id"] = data["version_sha"]
    data["prompt_eval_name"] = data["case_name"]
    data["updated_at"] = data["updated_at"] or data["created_at"]
    return data
