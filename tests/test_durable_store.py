"""The durable store on both backends: eval records, the migration lists, a bounded run-log
queue during an outage, and a server whose durable tables are in PostgreSQL (two replicas on
one store). The key and run-log suites (test_keys.py, test_runlog.py) run on both as well."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from llmkit import import_rows, keys, runlog_schema
from llmkit.config import Settings
from llmkit.db import Database, DurableStore, Migrations, open_durable
from llmkit.errors import ConfigError, RunLogUnavailable
from llmkit.evals import records
from llmkit.evals.asserts import AssertionResult, Outcome
from llmkit.evals.records import EvalRecords, StoredResult, insert_results, insert_run
from llmkit.evals.results import CaseResult
from llmkit.runlog import RunLog
from llmkit.runlog_record import RunRecord
from llmkit.runlog_writer import QueueFull
from tests.api_fixtures import MakeApi
from tests.helpers import Repo, poll
from tests.pg import Outage, PgServer

DURABLE_LISTS = [
    runlog_schema.MIGRATIONS,
    keys.MIGRATIONS,
    records.MIGRATIONS,
    import_rows.MIGRATIONS,
]
SHA = "a1b2c3d4" * 5
ECHO_FILES = {"prompts/echoed.md": "---\nmodel: echo\n---\n<!-- role:system -->\nEchoed.\n"}


def case_result(
    name: str, *, number: int | None, sha: str | None, blob: str | None = None, passed: bool
) -> CaseResult:
    return CaseResult(
        prompt_key="greet",
        case_name=name,
        file="evals/greet/basic.yaml",
        line=1,
        version_number=number,
        version_sha=sha,
        model="echo",
        repeat_index=0,
        outcome=Outcome(text="hello", latency_ms=12.5, input_tokens=3, output_tokens=4),
        assertions=[AssertionResult(type="contains", passed=passed, score=1.0, reason="")],
        passed=passed,
        draft_blob=blob,
    )


def test_eval_records_store_runs_scores_and_the_cache(durable_db: DurableStore) -> None:
    evals = EvalRecords(durable_db)
    results = [
        case_result("a", number=1, sha=SHA, passed=True),
        case_result("b", number=1, sha=SHA, passed=False),
        case_result("c", number=None, sha=None, blob="f" * 40, passed=True),
    ]
    run_id = evals.save_run(results, ref="main", summary={"passed": 2})
    stored = evals.results(run_id=run_id)
    assert [(r["case_name"], r["passed"], r["draft"]) for r in stored] == [
        ("a", True, False),
        ("b", False, False),
        ("c", True, True),
    ]
    assert stored[0]["assertions"] == [
        {"type": "contains", "passed": True, "score": 1.0, "reason": "", "weight": 1.0}
    ]
    assert stored[0]["latency_ms"] == 12.5 and stored[0]["input_tokens"] == 3
    scored = evals.set_score(stored[1]["id"], 4)
    assert (scored["score"], scored["human_score"]) == (4, 4)
    # A result never changed reads its creation as its last change; a scored one, the score's.
    assert stored[0]["updated_at"] == stored[0]["created_at"]
    assert scored["updated_at"] >= scored["created_at"]
    assert evals.results(run_id=run_id)[1]["updated_at"] == scored["updated_at"]
    performance = evals.performance("greet")
    # Committed versions first, then drafts: the same order on both backends.
    assert [(p["version_number"], p["draft"]) for p in performance] == [(1, False), (None, True)]
    assert performance[0]["pass_rate"] == 0.5 and isinstance(performance[0]["pass_rate"], float)
    assert (performance[0]["avg_score"], performance[0]["scored_count"]) == (4.0, 1)
    assert performance[1]["avg_score"] is None

    assert evals.cached("k") is None
    evals.remember([("k", "echo", {"text": "first"}, 1.0)])
    evals.remember([("k", "echo", {"text": "second"}, 2.0)])  # replaces, never duplicates
    assert evals.cached("k") == ({"text": "second"}, 2.0)


def test_stored_results_get_their_new_ids(durable_db: DurableStore) -> None:
    EvalRecords(durable_db)
    stored = [
        StoredResult("p", 1, SHA, f"case {i}", None, "m", 0, "out", "2024-01-01T00:00:00.000Z")
        for i in range(3)
    ]
    with durable_db.write() as conn:
        insert_run(
            conn, "run-1", started_at="2024-01-01T00:00:00.000Z", finished_at=None, source="x"
        )
        ids = insert_results(conn, "run-1", stored)
    assert len(set(ids)) == 3 and all(isinstance(i, int) and i > 0 for i in ids)
    rows = EvalRecords(durable_db).results(run_id="run-1")
    assert [r["id"] for r in rows] == ids


def _tables(db: DurableStore) -> dict[str, list[str]]:
    reader = db.reader()
    if db.dialect == "sqlite":
        names = [
            row[0]
            for row in reader.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            name: [c[1] for c in reader.execute(f"PRAGMA table_info({name})").fetchall()]
            for name in names
        }
    columns = reader.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in columns:
        tables.setdefault(table, []).append(column)
    return tables


def test_every_durable_list_builds_the_same_tables_on_postgresql_as_on_sqlite(
    pg_server: PgServer, tmp_path: Any
) -> None:
    lite = Database(tmp_path / "lite.db")
    pg = open_durable(pg_server.new_store())
    try:
        for migrations in DURABLE_LISTS:
            assert lite.migrate(migrations) == migrations.names
            assert pg.migrate(migrations) == migrations.names
            assert pg.migrate(migrations) == [], "a migration ran twice"
        assert _tables(pg) == _tables(lite)
        # Browser sessions, the id counter and the rollups are among them.
        new = {"sessions", "run_log_ids", "run_log_totals", "run_log_counts", "run_log_latency"}
        assert new <= set(_tables(pg))
        recorded = pg.reader().execute("SELECT kind, name FROM _migrations").fetchall()
        assert len(recorded) == sum(len(m.names) for m in DURABLE_LISTS)
    finally:
        lite.close()
        pg.close()


def test_a_batch_and_what_is_written_from_it_commit_together_or_not_at_all(
    durable_db: DurableStore,
) -> None:
    """insert_many's `then` runs in the batch's transaction (the run log's rollups): when it
    fails, the rows are not stored either, on either backend (a COPY on PostgreSQL)."""
    durable_db.execute_write("CREATE TABLE batch_rows (id BIGINT PRIMARY KEY, name TEXT)")
    durable_db.execute_write("CREATE TABLE batch_sums (one BIGINT PRIMARY KEY, n BIGINT)")

    def count(conn: Any, rows: list[tuple[Any, ...]]) -> None:
        conn.execute(
            "INSERT INTO batch_sums (one, n) VALUES (1, ?)"
            " ON CONFLICT (one) DO UPDATE SET n = batch_sums.n + excluded.n",
            (len(rows),),
        )

    def fail(conn: Any, rows: list[tuple[Any, ...]]) -> None:
        count(conn, rows)
        raise RuntimeError("the hook failed")

    def stored() -> tuple[int, Any]:
        reader = durable_db.reader()
        rows = reader.execute("SELECT COUNT(*) FROM batch_rows").fetchone()[0]
        sums = reader.execute("SELECT n FROM batch_sums").fetchone()
        return int(rows), None if sums is None else int(sums[0])

    durable_db.insert_many("batch_rows", ("id", "name"), [(1, "a"), (2, "b")], then=count)
    assert stored() == (2, 2)
    with pytest.raises(RuntimeError, match="the hook failed"):
        durable_db.insert_many("batch_rows", ("id", "name"), [(3, "c")], then=fail)
    assert stored() == (2, 2)
    durable_db.insert_many("batch_rows", ("id", "name"), [(3, "c")])  # without a hook
    durable_db.insert_many("batch_rows", ("id", "name"), [(4, "d")], then=count)
    assert stored() == (4, 3)


def test_two_processes_opening_one_store_at_once_migrate_it_once(durable_url: str) -> None:
    stores = [open_durable(durable_url) for _ in range(4)]
    ran: list[list[str]] = []
    barrier = threading.Barrier(len(stores))

    def open_log(db: DurableStore) -> None:
        barrier.wait(timeout=10)
        ran.append(db.migrate(runlog_schema.MIGRATIONS))

    threads = [threading.Thread(target=open_log, args=(db,)) for db in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        # Each migration ran once, in whichever process got to it first.
        assert len(ran) == len(stores)
        assert sorted(name for names in ran for name in names) == runlog_schema.MIGRATIONS.names
    finally:
        for db in stores:
            db.close()


def test_a_postgresql_spelling_must_name_a_migration_of_the_list() -> None:
    migrations = Migrations("example")

    @migrations.register
    def m001_first(conn: Any) -> None:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")

    @migrations.on_postgresql("m001_first")
    def first_on_postgresql(conn: Any) -> None:
        conn.execute("CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY)")

    assert migrations.functions("sqlite") == [("m001_first", m001_first)]
    assert migrations.functions("postgresql") == [("m001_first", first_on_postgresql)]
    with pytest.raises(ValueError, match="m002_missing"):
        migrations.on_postgresql("m002_missing")
    with pytest.raises(ValueError, match="already|has a PostgreSQL spelling"):
        migrations.on_postgresql("m001_first")(first_on_postgresql)


def test_sql_is_written_once_with_question_marks() -> None:
    from llmkit.db_postgres import redacted, to_psycopg

    assert to_psycopg("SELECT a FROM t WHERE b = ? AND c LIKE ?") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE %s"
    )
    # Inside quotes a ? is text; a % is always doubled, since psycopg reads it.
    assert to_psycopg("SELECT '?', \"a?\", 5 % 2 WHERE x = ?") == (
        "SELECT '?', \"a?\", 5 %% 2 WHERE x = %s"
    )
    assert to_psycopg("SELECT 'it''s ?' || ?") == "SELECT 'it''s ?' || %s"
    assert (
        redacted("postgresql://app:s3cret@db:5432/llmkit") == "postgresql://app:***@db:5432/llmkit"
    )
    assert redacted("postgresql://app@db/llmkit") == "postgresql://app@db/llmkit"


def test_a_database_url_that_is_not_postgresql_is_refused_by_name(
    repo: Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMKIT_DATABASE_URL", "mysql://app@db/llmkit")
    with pytest.raises(ConfigError, match="LLMKIT_DATABASE_URL.*'mysql'"):
        Settings.resolve(repo.root)


def test_an_unreachable_postgresql_fails_at_start_naming_it_without_its_password(
    pg_server: PgServer,
) -> None:
    url = f"postgresql://nobody:hunter2@127.0.0.1:{pg_server.port}/stores"
    with pytest.raises(ConfigError) as info:
        open_durable(url)
    assert "nobody:***@127.0.0.1" in info.value.message
    assert "hunter2" not in info.value.message


def record(**fields: Any) -> RunRecord:
    return RunRecord(prompt_key="p", model="echo", request={"messages": []}, **fields)


def test_a_full_queue_drops_rows_counts_them_and_tells_a_waiting_caller(
    durable_db: DurableStore, store_outage: Outage
) -> None:
    log = RunLog(durable_db, batch_ms=5, max_queued=5)
    log.start()
    store_outage.begin()
    log.log(held := record())
    # The writer holds the first row and retries it; the queue fills behind it.
    assert poll(lambda: log.write_failures >= 1)
    queued = [record() for _ in range(5)]
    for r in queued:
        log.log(r)
    dropped = record()
    log.log(dropped)  # returns at once, as every log() does
    with pytest.raises(QueueFull) as info:
        asyncio.run(log.log_committed(waiting := record()))
    assert isinstance(info.value, RunLogUnavailable) and info.value.status == 503
    assert waiting.trace_id in info.value.message
    health = log.health()
    assert (health["rows_dropped"], health["max_queued"], health["status"]) == (2, 5, "degraded")
    store_outage.end()
    assert log.flush(timeout=30)
    assert {r["trace_id"] for r in log.list()} == {held.trace_id, *(r.trace_id for r in queued)}
    log.close()


def chat(api: Any) -> str:
    body = {"model": "echoed", "messages": [{"role": "user", "content": "hi"}]}
    response = api.client.post("/v1/chat/completions", json=body, headers=api.run)
    assert response.status_code == 200, response.text
    return str(response.headers["x-llmkit-trace-id"])


def test_replicas_share_keys_and_the_run_log_in_postgresql(
    make_api: MakeApi, pg_server: PgServer
) -> None:
    url = pg_server.new_store()
    first = make_api(ECHO_FILES, database_url=url)
    second = make_api(ECHO_FILES, database_url=url)
    # A key made on one replica works on the other: the keys are in the shared store.
    body = {"model": "echoed", "messages": [{"role": "user", "content": "hi"}]}
    response = second.client.post("/v1/chat/completions", json=body, headers=first.run)
    assert response.status_code == 200, response.text
    trace_id = response.headers["x-llmkit-trace-id"]
    assert second.ws.runlog.flush()
    found = first.client.get(f"/v1/ui/logs/{trace_id}", headers=first.admin)
    assert found.status_code == 200, found.text
    # Nothing durable went to the replicas' own SQLite files, which hold only the index.
    for api in (first, second):
        local = api.ws.db.reader()
        tables = {r[0] for r in local.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "run_log" not in tables and "api_keys" not in tables
        assert api.ws.durable.dialect == "postgresql"
    health = first.client.get("/healthz").json()
    assert (health["status"], health["runlog"]["store"]) == ("ok", "postgresql")
    assert url.split("@")[0] not in json.dumps(health), "the store's address is not served"


def test_a_postgresql_outage_never_blocks_a_call_and_healthz_says_so(
    make_api: MakeApi, pg_server: PgServer
) -> None:
    url = pg_server.new_store()
    api = make_api(ECHO_FILES, database_url=url)
    chat(api)  # verifies the run key once: it is cached from now on
    assert api.ws.runlog.flush()
    pg_server.cut_off(url)
    try:
        during = [chat(api) for _ in range(3)]
        assert poll(lambda: api.client.get("/healthz").json()["status"] == "degraded")
        health = api.client.get("/healthz").json()["runlog"]
        assert health["last_error"] == "TransientDatabaseError" and health["alive"]
        assert health["retrying_for_s"] is not None
        strict = api.client.get("/healthz", params={"strict": "true"})
        assert strict.status_code == 503
    finally:
        pg_server.restore(url)
    assert api.ws.runlog.flush(timeout=30)
    assert poll(lambda: api.client.get("/healthz").json()["status"] == "ok")
    for trace_id in during:
        assert api.ws.runlog.get(trace_id) is not None
