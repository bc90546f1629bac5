from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmkit.db import Database
from llmkit.errors import BadRequest
from llmkit.runlog import MAX_PAGE_SIZE, RunLog, RunRecord, migrate

SHA_1 = "1111aaaa" + "0" * 32
SHA_2 = "2222bbbb" + "0" * 32
SHA_DIGITS = "12345678" + "0" * 32


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "llmkit.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = Database(db_path)
    yield database
    database.close()


@pytest.fixture
def runlog(db: Database) -> Iterator[RunLog]:
    log = RunLog(db, batch_ms=5)
    log.start()
    yield log
    log.close()


def record(**fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "prompt_key": "support/triage",
        "model": "openai/gpt-4o-mini",
        "request": {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
    }
    values.update(fields)
    return RunRecord(**values)


def at(minute: int) -> str:
    return f"2024-05-01T10:{minute:02d}:00.000Z"


def wait_until(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def test_migration_creates_expected_columns(db: Database) -> None:
    assert migrate(db) == ["m001_initial"]
    assert migrate(db) == []
    conn = db.reader()
    columns = {row["name"]: row["type"] for row in conn.execute("PRAGMA table_info(run_log)")}
    assert columns == {
        "id": "INTEGER",
        "trace_id": "TEXT",
        "prompt_key": "TEXT",
        "version_number": "INTEGER",
        "version_sha": "TEXT",
        "model": "TEXT",
        "request": "TEXT",
        "response": "TEXT",
        "status": "TEXT",
        "error": "TEXT",
        "http_status": "INTEGER",
        "input_tokens": "INTEGER",
        "output_tokens": "INTEGER",
        "reasoning_tokens": "INTEGER",
        "cost": "REAL",
        "latency_ms": "INTEGER",
        "ttft_ms": "INTEGER",
        "stream": "INTEGER",
        "api_key_id": "INTEGER",
        "source": "TEXT",
        "created_at": "TEXT",
    }
    indexes = {row["name"] for row in conn.execute("PRAGMA index_list(run_log)")}
    assert indexes == {
        "run_log_created_at",
        "run_log_prompt_created_at",
        "run_log_latency_ms",
        "run_log_ttft_ms",
        "sqlite_autoindex_run_log_1",
    }
    kinds = {tuple(row) for row in conn.execute("SELECT kind, name FROM _migrations")}
    assert kinds == {("runlog", "m001_initial")}


def test_a_logged_record_reads_back_as_it_was(runlog: RunLog) -> None:
    full = record(
        version_number=3,
        version_sha=SHA_1,
        response="streamed text, assembled",
        status="error",
        error="upstream said no",
        http_status=502,
        input_tokens=12,
        output_tokens=0,
        reasoning_tokens=4,
        cost=0.00125,
        latency_ms=812,
        ttft_ms=120,
        stream=True,
        api_key_id=7,
        source="ui",
    )
    runlog.log(full)
    assert runlog.flush()
    assert runlog.get(full.trace_id) == dataclasses.asdict(full)
    assert runlog.get("no-such-trace") is None


def test_created_at_is_stored_as_utc_milliseconds(runlog: RunLog) -> None:
    default = record()
    offset = record(created_at="2024-05-01T12:00:00+02:00")
    runlog.log(default)
    runlog.log(offset)
    assert runlog.flush()
    stored = runlog.get(default.trace_id)
    assert stored is not None
    assert stored["created_at"] == default.created_at
    assert len(default.created_at) == len("2024-05-01T10:00:00.000Z")
    assert default.created_at.endswith("Z")
    converted = runlog.get(offset.trace_id)
    assert converted is not None and converted["created_at"] == "2024-05-01T10:00:00.000Z"


def test_logging_from_many_threads_loses_nothing(runlog: RunLog, db: Database) -> None:
    trace_ids: list[list[str]] = [[] for _ in range(8)]

    def log_many(slot: int) -> None:
        for i in range(250):
            r = record(prompt_key=f"p{slot}", latency_ms=i)
            runlog.log(r)
            trace_ids[slot].append(r.trace_id)

    threads = [threading.Thread(target=log_many, args=(slot,)) for slot in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert runlog.flush()
    assert runlog.count() == 2000
    assert runlog.count(prompt="p3") == 250
    stored = {row["trace_id"] for row in db.reader().execute("SELECT trace_id FROM run_log")}
    assert stored == {t for ids in trace_ids for t in ids}


def test_logging_from_asyncio_tasks_does_not_write_on_the_loop(db: Database) -> None:
    runlog = RunLog(db, batch_ms=5)
    written_during_loop: list[int] = []

    async def handle(n: int) -> None:
        for i in range(50):
            runlog.log(record(prompt_key=f"task{n}", latency_ms=i))
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(handle(n) for n in range(4)))
        written_during_loop.append(runlog.count())

    asyncio.run(main())
    assert written_during_loop == [0], "log() only queues; the writer thread writes"
    runlog.start()
    assert runlog.flush()
    assert runlog.count() == 200
    assert runlog.count(prompt="task2") == 50
    runlog.close()


def test_logging_from_an_asyncio_task_with_the_writer_running(runlog: RunLog) -> None:
    async def main() -> None:
        task = asyncio.create_task(log_in_task())
        await asyncio.wait_for(task, timeout=10)

    async def log_in_task() -> None:
        for i in range(300):
            runlog.log(record(latency_ms=i))
            if i % 50 == 0:
                await asyncio.sleep(0.001)

    asyncio.run(main())
    assert runlog.flush()
    assert runlog.count() == 300


def test_close_writes_everything_and_a_reopened_database_has_every_row(db_path: Path) -> None:
    db = Database(db_path)
    runlog = RunLog(db)
    runlog.start()
    trace_ids = []
    for i in range(5000):
        r = record(latency_ms=i % 100)
        runlog.log(r)
        trace_ids.append(r.trace_id)
    runlog.close()
    with pytest.raises(RuntimeError, match="closed"):
        runlog.log(record())
    runlog.close()
    db.close()

    reopened = Database(db_path)
    try:
        again = RunLog(reopened)
        assert again.count() == 5000
        rows = reopened.reader().execute("SELECT trace_id FROM run_log").fetchall()
        assert {row[0] for row in rows} == set(trace_ids)
        assert again.get(trace_ids[-1]) is not None
    finally:
        reopened.close()


def test_close_without_start_still_writes_what_was_logged(db: Database) -> None:
    runlog = RunLog(db)
    runlog.log(record())
    runlog.log(record())
    runlog.close()
    assert runlog.count() == 2


def test_records_are_written_in_batches_of_max_batch(db: Database) -> None:
    # batch_ms is long, so only max_batch and flush() cut batches, whatever the timing.
    runlog = RunLog(db, batch_ms=60_000, max_batch=100)
    runlog.start()
    for i in range(250):
        runlog.log(record(latency_ms=i))
    assert runlog.flush()
    assert (runlog.batches_written, runlog.rows_written) == (3, 250)
    runlog.close()


def test_a_backlog_is_written_in_as_few_transactions_as_possible(db: Database) -> None:
    runlog = RunLog(db, batch_ms=5, max_batch=500)
    for i in range(1200):
        runlog.log(record(latency_ms=i))
    runlog.start()
    assert runlog.flush()
    assert (runlog.batches_written, runlog.rows_written) == (3, 1200)
    runlog.close()


def test_a_batch_is_written_after_batch_ms_without_a_flush(db: Database) -> None:
    runlog = RunLog(db, batch_ms=20, max_batch=500)
    runlog.start()
    only = record()
    runlog.log(only)
    assert wait_until(lambda: runlog.rows_written == 1)
    assert runlog.get(only.trace_id) is not None
    assert runlog.batches_written == 1
    runlog.close()


def test_a_failed_batch_is_retried_and_reported(
    db: Database, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runlog = RunLog(db, batch_ms=5)
    runlog.start()
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("ALTER TABLE run_log RENAME TO run_log_away")
        kept = record()
        with caplog.at_level(logging.ERROR, logger="llmkit.runlog"):
            runlog.log(kept)
            assert wait_until(lambda: runlog.write_failures >= 1)
            other.execute("ALTER TABLE run_log_away RENAME TO run_log")
            assert runlog.flush(timeout=10)
    finally:
        other.close()
    assert runlog.get(kept.trace_id) is not None
    assert runlog.rows_written == 1
    assert any("retrying" in r.getMessage() for r in caplog.records)
    runlog.close()


def test_a_row_the_database_rejects_is_reported_and_the_rest_are_kept(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    runlog = RunLog(db, batch_ms=60_000)
    first = record(trace_id="dup-trace")
    second = record(trace_id="dup-trace")
    third = record()
    with caplog.at_level(logging.ERROR, logger="llmkit.runlog"):
        for r in (first, second, third):
            runlog.log(r)
        runlog.start()
        assert runlog.flush()
    assert runlog.count() == 2
    assert runlog.get(third.trace_id) is not None
    assert (runlog.rows_written, runlog.rows_rejected) == (2, 1)
    assert any("dup-trace" in r.getMessage() for r in caplog.records)
    runlog.close()


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        ({"status": "done"}, "'done'"),
        ({"source": "web"}, "'web'"),
        ({"prompt_key": ""}, "prompt_key"),
        ({"input_tokens": "12"}, "'12'"),
        ({"latency_ms": True}, "latency_ms"),
        ({"created_at": "yesterday"}, "'yesterday'"),
    ],
)
def test_log_rejects_a_malformed_record_naming_the_value(
    runlog: RunLog, fields: dict[str, Any], shown: str
) -> None:
    with pytest.raises(BadRequest) as info:
        runlog.log(record(**fields))
    assert shown in info.value.message


@pytest.fixture
def filled(runlog: RunLog) -> RunLog:
    """Ten runs one minute apart: minute m has prompt a (even m) or b (odd m)."""
    for minute in range(10):
        runlog.log(
            record(
                trace_id=f"t{minute}",
                prompt_key="a" if minute % 2 == 0 else "b",
                version_number=1 if minute < 5 else 2,
                version_sha=SHA_1 if minute < 5 else SHA_DIGITS,
                status="error" if minute in (3, 4) else "ok",
                created_at=at(minute),
            )
        )
    runlog.log(record(trace_id="draft", prompt_key="a", version_number=3, created_at=at(30)))
    assert runlog.flush()
    return runlog


def trace_ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["trace_id"] for row in rows]


def test_list_is_newest_first_and_pages(filled: RunLog) -> None:
    assert trace_ids(filled.list()) == ["draft"] + [f"t{m}" for m in range(9, -1, -1)]
    assert trace_ids(filled.list(page=1, page_size=4)) == ["draft", "t9", "t8", "t7"]
    assert trace_ids(filled.list(page=2, page_size=4)) == ["t6", "t5", "t4", "t3"]
    assert trace_ids(filled.list(page=3, page_size=4)) == ["t2", "t1", "t0"]
    assert filled.list(page=4, page_size=4) == []
    assert filled.count() == 11


def test_filters_and_count_agree(filled: RunLog) -> None:
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"prompt": "a"}, ["draft", "t8", "t6", "t4", "t2", "t0"]),
        ({"prompt": "nope"}, []),
        ({"status": "error"}, ["t4", "t3"]),
        ({"version": 1}, ["t4", "t3", "t2", "t1", "t0"]),
        ({"version": "3"}, ["draft"]),
        ({"version": "1111"}, ["t4", "t3", "t2", "t1", "t0"]),
        ({"version": "1111AAAA"}, ["t4", "t3", "t2", "t1", "t0"]),
        ({"version": "12345678"}, ["t9", "t8", "t7", "t6", "t5"]),
        ({"since": at(7)}, ["draft", "t9", "t8", "t7"]),
        ({"until": at(2)}, ["t1", "t0"]),
        ({"since": "2024-05-01T12:03:00+02:00", "until": "2024-05-01T10:05:00"}, ["t4", "t3"]),
        ({"since": "2024-05-02"}, []),
        ({"prompt": "b", "version": 2, "status": "ok"}, ["t9", "t7", "t5"]),
    ]
    for filters, expected in cases:
        assert trace_ids(filled.list(**filters)) == expected, filters
        assert filled.count(**filters) == len(expected), filters


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda log: log.list(page=0), "page"),
        (lambda log: log.list(page_size=0), "page_size"),
        (lambda log: log.list(page="2"), "'2'"),
        (lambda log: log.list(status="done"), "'done'"),
        (lambda log: log.count(status="done"), "'done'"),
        (lambda log: log.list(since="last tuesday"), "'last tuesday'"),
        (lambda log: log.count(until="2024-13-01"), "'2024-13-01'"),
        (lambda log: log.list(version="v7"), "'v7'"),
        (lambda log: log.list(version="abc"), "'abc'"),
        (lambda log: log.list(prompt=""), "prompt"),
    ],
)
def test_bad_filters_are_bad_requests_naming_the_value(
    runlog: RunLog, call: Any, shown: str
) -> None:
    with pytest.raises(BadRequest) as info:
        call(runlog)
    assert shown in info.value.message


def test_page_size_is_capped(db: Database) -> None:
    runlog = RunLog(db)
    for _ in range(MAX_PAGE_SIZE + 20):
        runlog.log(record())
    runlog.close()
    assert len(runlog.list(page_size=10_000)) == MAX_PAGE_SIZE
    assert len(runlog.list(page=2, page_size=10_000)) == 20


def test_stats_per_version_with_nearest_rank_percentiles(runlog: RunLog) -> None:
    latencies = list(range(1, 101))
    random.Random(7).shuffle(latencies)
    for i, latency in enumerate(latencies):
        runlog.log(
            record(
                version_number=1,
                version_sha=SHA_1,
                latency_ms=latency,
                ttft_ms=latency * 2,
                status="error" if latency <= 10 else "ok",
                input_tokens=10,
                output_tokens=5,
                cost=0.25,
                created_at=f"2024-05-01T10:00:{i % 60:02d}.{i:03d}Z",
            )
        )
    for latency in (30, 10, 20):
        runlog.log(
            record(
                version_number=2,
                version_sha=SHA_2,
                latency_ms=latency,
                input_tokens=1,
                output_tokens=2,
                reasoning_tokens=3,
                created_at="2024-05-02T00:00:00.000Z",
            )
        )
    runlog.log(record(version_number=3, latency_ms=7, status="cancelled", created_at=at(1)))
    runlog.log(record(prompt_key="other", version_number=1, version_sha=SHA_1, latency_ms=9999))
    assert runlog.flush()

    v1, v2, draft = runlog.stats("support/triage")
    assert v1 == {
        "version_number": 1,
        "version_sha": SHA_1,
        "count": 100,
        "error_count": 10,
        "error_rate": 0.1,
        "latency_p50_ms": 50,
        "latency_p95_ms": 95,
        "ttft_p50_ms": 100,
        "input_tokens": 1000,
        "output_tokens": 500,
        "reasoning_tokens": 0,
        "cost": 25.0,
        "first_at": "2024-05-01T10:00:00.000Z",
        "last_at": "2024-05-01T10:00:59.059Z",
    }
    # n = 3: p50 is rank ceil(1.5) = 2, p95 is rank ceil(2.85) = 3.
    assert (v2["latency_p50_ms"], v2["latency_p95_ms"], v2["ttft_p50_ms"]) == (20, 30, None)
    assert (v2["count"], v2["error_rate"], v2["cost"]) == (3, 0.0, None)
    assert (v2["input_tokens"], v2["output_tokens"], v2["reasoning_tokens"]) == (3, 6, 9)
    assert (draft["version_number"], draft["version_sha"]) == (3, None)
    assert (draft["latency_p50_ms"], draft["latency_p95_ms"], draft["count"]) == (7, 7, 1)
    assert draft["error_count"] == 0
    assert runlog.stats("nothing-here") == []
