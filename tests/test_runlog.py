from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llmkit.db import Database, DurableStore, open_durable
from llmkit.errors import BadRequest
from llmkit.runlog import RunLog
from llmkit.runlog_query import MAX_PAGE_SIZE
from llmkit.runlog_record import RunRecord
from tests.helpers import poll, put_unshaped_row
from tests.pg import Outage

SHA_1 = "1111aaaa" + "0" * 32
SHA_2 = "2222bbbb" + "0" * 32
SHA_DIGITS = "12345678" + "0" * 32
DRAFT_BLOB = "3333cccc" + "0" * 32


@pytest.fixture
def db(durable_db: DurableStore) -> DurableStore:
    """The store, on each backend in turn."""
    return durable_db


@pytest.fixture
def runlog(db: DurableStore) -> Iterator[RunLog]:
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
    stored = runlog.get(full.trace_id)
    assert stored is not None and stored["id"] > 0, "the writer gives a row without an id one"
    assert stored == {
        **dataclasses.asdict(full),
        "id": stored["id"],
        "truncated": [],
        "log_notes": [],
        # LLMKit's names, beside ours; its UI hands the JSON texts to JSON.parse.
        "model_name": full.model,  # logged without one: the model it ran
        "status_code": 502,
        "request_body": json.dumps(full.request, ensure_ascii=False),
        "response_data": '"streamed text, assembled"',
    }
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


def test_logging_from_many_threads_loses_nothing(runlog: RunLog, db: DurableStore) -> None:
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


def test_logging_from_asyncio_tasks_does_not_write_on_the_loop(db: DurableStore) -> None:
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


def test_close_writes_everything_and_a_reopened_database_has_every_row(durable_url: str) -> None:
    db = open_durable(durable_url)
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

    reopened = open_durable(durable_url)
    try:
        again = RunLog(reopened)
        assert again.count() == 5000
        rows = reopened.reader().execute("SELECT trace_id FROM run_log").fetchall()
        assert {row[0] for row in rows} == set(trace_ids)
        assert again.get(trace_ids[-1]) is not None
    finally:
        reopened.close()


def test_close_without_start_still_writes_what_was_logged(db: DurableStore) -> None:
    runlog = RunLog(db)
    runlog.log(record())
    runlog.log(record())
    runlog.close()
    assert runlog.count() == 2


def test_records_are_written_in_batches_of_max_batch(db: DurableStore) -> None:
    # batch_ms is long, so only max_batch and flush() cut batches, whatever the timing.
    runlog = RunLog(db, batch_ms=60_000, max_batch=100)
    runlog.start()
    for i in range(250):
        runlog.log(record(latency_ms=i))
    assert runlog.flush()
    assert (runlog.batches_written, runlog.rows_written) == (3, 250)
    runlog.close()


def test_a_backlog_is_written_in_as_few_transactions_as_possible(db: DurableStore) -> None:
    runlog = RunLog(db, batch_ms=5, max_batch=500)
    for i in range(1200):
        runlog.log(record(latency_ms=i))
    runlog.start()
    assert runlog.flush()
    assert (runlog.batches_written, runlog.rows_written) == (3, 1200)
    runlog.close()


def test_a_batch_is_written_after_batch_ms_without_a_flush(db: DurableStore) -> None:
    runlog = RunLog(db, batch_ms=20, max_batch=500)
    runlog.start()
    only = record()
    runlog.log(only)
    assert poll(lambda: runlog.rows_written == 1)
    assert runlog.get(only.trace_id) is not None
    assert runlog.batches_written == 1
    runlog.close()


def test_a_failed_batch_is_retried_and_reported(
    db: DurableStore, store_outage: Outage, caplog: pytest.LogCaptureFixture
) -> None:
    runlog = RunLog(db, batch_ms=5)
    runlog.start()
    store_outage.begin()
    kept = record()
    with caplog.at_level(logging.ERROR, logger="llmkit.runlog"):
        runlog.log(kept)
        assert poll(lambda: runlog.write_failures >= 1)
        store_outage.end()
        assert runlog.flush(timeout=10)
    assert runlog.get(kept.trace_id) is not None
    assert runlog.rows_written == 1
    assert any("retrying" in r.getMessage() for r in caplog.records)
    runlog.close()


def test_a_row_the_database_rejects_is_reported_and_the_rest_are_kept(
    db: DurableStore, caplog: pytest.LogCaptureFixture
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
    runlog.log(
        record(
            trace_id="draft", prompt_key="a", draft=True, draft_blob=DRAFT_BLOB, created_at=at(30)
        )
    )
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
        ({"version": "3"}, []),
        ({"version": "draft"}, ["draft"]),
        ({"version": "3333"}, []),
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


def test_page_size_is_capped(db: DurableStore) -> None:
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
    runlog.log(
        record(
            draft=True, draft_blob=DRAFT_BLOB, latency_ms=7, status="cancelled", created_at=at(1)
        )
    )
    runlog.log(record(prompt_key="other", version_number=1, version_sha=SHA_1, latency_ms=9999))
    assert runlog.flush()

    v1, v2, draft = runlog.stats("support/triage")
    assert v1 == {
        "version_number": 1,
        "version_sha": SHA_1,
        "draft": False,
        "draft_blob": None,
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
    assert (draft["version_number"], draft["version_sha"]) == (None, None)
    assert (draft["draft"], draft["draft_blob"]) == (True, DRAFT_BLOB)
    assert (draft["latency_p50_ms"], draft["latency_p95_ms"], draft["count"]) == (7, 7, 1)
    assert draft["error_count"] == 0
    assert runlog.stats("nothing-here") == []


# -- rows nothing can stop -----------------------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def circular() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        (
            {"request": {"messages": [{"role": "user", "content": "x\ud800y"}]}},
            lambda row: row["request"]["messages"][0]["content"] == "x\ufffdy",
        ),
        (
            {"response": "answer \udfff with a lone low surrogate"},
            lambda row: row["response"] == "answer \ufffd with a lone low surrogate",
        ),
        ({"error": "nul \x00 inside"}, lambda row: row["error"] == "nul \ufffd inside"),
        ({"error": "surrogate \ud83d alone"}, lambda row: row["error"] == "surrogate \ufffd alone"),
        (
            {"request": {"messages": [], "params": {"temperature": float("nan")}}},
            lambda row: row["request"]["params"]["temperature"] == "nan",
        ),
        (
            {"request": {"params": {(1, 2): "tuple key", "when": datetime.now(UTC)}}},
            lambda row: row["request"]["params"]["(1, 2)"] == "tuple key",
        ),
        ({"request": circular()}, lambda row: row["request"]["self"] == "<circular reference>"),
        (
            {"response": {"unprintable": Unprintable()}},
            lambda row: row["response"] == {"unprintable": "<unprintable Unprintable>"},
        ),
        (
            {"response": {b"bytes key": b"\xff bytes"}},
            lambda row: row["response"] == {"b'bytes key'": "\ufffd bytes"},
        ),
        (
            {"response": {"digits": 10**5000}},
            lambda row: row["response"] == {"digits": "<an integer of 16610 bits>"},
        ),
        ({"cost": float("inf")}, lambda row: row["cost"] is None),
        ({"latency_ms": float("nan")}, lambda row: row["latency_ms"] is None),
        ({"input_tokens": 10**30}, lambda row: row["input_tokens"] is None),
        ({"cost": 10**400}, lambda row: row["cost"] is None),
    ],
    ids=[
        "surrogate-in-request",
        "surrogate-in-response",
        "nul-in-error",
        "surrogate-in-error",
        "nan-in-request",
        "tuple-key-and-datetime",
        "circular",
        "unprintable",
        "bytes",
        "int-over-4300-digits",
        "infinite-cost",
        "nan-latency",
        "int-over-64-bits",
        "huge-int-cost",
    ],
)
def test_a_row_that_sqlite_utf8_or_json_would_refuse_is_stored_sanitized_with_a_note(
    runlog: RunLog, fields: dict[str, Any], check: Any
) -> None:
    bad = record(**fields)
    after = record()
    runlog.log(bad)
    runlog.log(after)
    assert runlog.flush()
    row = runlog.get(bad.trace_id)
    assert row is not None, "the bad row was not stored"
    assert check(row), row
    assert row["log_notes"], "what was changed is not noted"
    assert row["truncated"] == []
    assert runlog.get(after.trace_id) is not None
    health = runlog.health()
    assert (health["status"], health["alive"], health["rows_written"]) == ("ok", True, 2)
    # Everything read back is strict JSON, as the API serves it.
    json.dumps(row, allow_nan=False, ensure_ascii=False).encode("utf-8")


def test_a_clean_row_is_stored_unchanged_without_notes(runlog: RunLog) -> None:
    clean = record(
        request={"messages": [{"role": "user", "content": "héllo wörld ✓ 🎉"}]},
        response="ok: héllo 🎉",
        error='quoted "text" and a tab\t',
    )
    runlog.log(clean)
    assert runlog.flush()
    row = runlog.get(clean.trace_id)
    assert row is not None
    assert row["request"] == clean.request
    assert (row["response"], row["error"]) == (clean.response, clean.error)
    assert (row["log_notes"], row["truncated"]) == ([], [])


def test_a_giant_field_is_cut_to_the_cap_and_marked_truncated(db: DurableStore) -> None:
    runlog = RunLog(db, batch_ms=5, field_max_bytes=4096)
    runlog.start()
    # 3-byte characters: the cut must fall on a character boundary.
    giant = record(
        request={"messages": [{"role": "user", "content": "€" * 10_000}]},
        response="small",
        error="e" * 5000,
    )
    runlog.log(giant)
    runlog.close()
    row = runlog.get(giant.trace_id)
    assert row is not None
    assert sorted(row["truncated"]) == ["error", "request"]
    assert isinstance(row["request"], str), "a cut JSON field reads back as its text prefix"
    assert row["request"].startswith('{"messages": [{"role": "user", "content": "€€€')
    assert len(row["request"].encode("utf-8")) <= 4096
    assert len(row["request"].encode("utf-8")) > 4096 - 3
    assert row["error"] == "e" * 4096
    assert row["response"] == "small"
    assert any("request: cut from" in note for note in row["log_notes"])
    stored = (
        db.reader()
        .execute("SELECT request FROM run_log WHERE trace_id = ?", (giant.trace_id,))
        .fetchone()[0]
    )
    assert len(stored.encode("utf-8")) <= 4096


def test_a_cut_json_field_is_never_parsed_as_a_shorter_value(db: DurableStore) -> None:
    runlog = RunLog(db, field_max_bytes=1024)
    number = record(response=int("7" * 4000))
    runlog.log(number)
    runlog.close()
    row = runlog.get(number.trace_id)
    assert row is not None
    assert row["truncated"] == ["response"]
    assert row["response"] == "7" * 1024, "a prefix of digits must not read back as a number"


def test_settings_that_would_break_the_log_are_refused_by_name(db: DurableStore) -> None:
    with pytest.raises(BadRequest, match="LLMKIT_LOG_FIELD_MAX_BYTES"):
        RunLog(db, field_max_bytes=10)
    with pytest.raises(BadRequest, match="LLMKIT_LOG_DURABLE_WAIT_S"):
        RunLog(db, durable_wait_s=0)


# -- a writer that survives anything -------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        UnicodeEncodeError("utf-8", "x\ud800", 1, 2, "surrogates not allowed"),
        MemoryError(),
        RuntimeError("a bug in the batch path"),
        OverflowError("Python int too large to convert to SQLite INTEGER"),
        sqlite3.IntegrityError("UNIQUE constraint failed"),
        sqlite3.InterfaceError("Error binding parameter 1"),
        sqlite3.DataError("string or blob too big"),
        sqlite3.ProgrammingError("Incorrect number of bindings"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_any_exception_from_a_batch_insert_falls_back_to_row_by_row(
    db: DurableStore, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    runlog = RunLog(db, batch_ms=60_000)
    failed: list[int] = []

    def failing(rows: Any) -> None:
        failed.append(1)
        raise error

    rows = [record() for _ in range(3)]
    for r in rows:
        runlog.log(r)
    runlog.start()
    # The window is a minute long: the batch is written at the flush, after the patch.
    monkeypatch.setattr(runlog._writer, "_insert_batch", failing)
    assert runlog.flush()
    assert failed, "the batch path was not taken"
    assert {r.trace_id for r in rows} <= {row["trace_id"] for row in runlog.list()}
    health = runlog.health()
    assert (health["status"], health["alive"]) == ("ok", True)
    assert health["last_error"] == type(error).__name__
    later = record()
    runlog.log(later)
    assert runlog.flush()
    assert runlog.get(later.trace_id) is not None
    monkeypatch.undo()
    runlog.close()


def test_a_row_the_driver_refuses_is_stored_scrubbed(runlog: RunLog) -> None:
    """A row that reached the writer unshaped (a lone surrogate, an int over 64 bits): the writer
    scrubs it rather than die."""
    put_unshaped_row(
        runlog, prompt_key="p\ud800", request='"x\udc00"', created_at=at(1), input_tokens=2**70
    )
    after = record()
    runlog.log(after)
    assert runlog.flush()
    row = runlog.get("unshaped")
    assert row is not None
    assert (row["prompt_key"], row["request"], row["input_tokens"]) == ("p\ufffd", "x\ufffd", None)
    assert any("scrubbed" in note for note in row["log_notes"])
    assert runlog.get(after.trace_id) is not None
    assert runlog.health()["rows_scrubbed"] == 1


def test_a_row_refused_even_scrubbed_is_set_aside_with_its_error(runlog: RunLog) -> None:
    first = record(trace_id="twice")
    second = record(trace_id="twice", response="the second answer")
    runlog.log(first)
    assert runlog.flush()
    runlog.log(second)
    runlog.log(third := record())
    assert runlog.flush()
    assert runlog.get("twice")["response"] is None  # type: ignore[index]
    assert runlog.get(third.trace_id) is not None
    [reject] = runlog.rejects()
    assert reject["trace_id"] == "twice"
    # Each database words it its own way; both name the broken uniqueness.
    assert reject["error"].startswith(
        ("IntegrityError: UNIQUE constraint failed", "UniqueViolation: duplicate key")
    )
    assert reject["row"]["response"] == '"the second answer"'
    health = runlog.health()
    assert (health["rows_rejected"], health["rows_lost"], health["status"]) == (1, 0, "ok")


class WriterFault(BaseException):
    """Escapes every `except Exception`: what would kill the writer thread."""


def test_a_writer_thread_that_dies_is_restarted_and_its_batch_written(
    db: DurableStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from llmkit.runlog_writer import LogWriter

    runlog = RunLog(db, batch_ms=5)
    store = LogWriter._store
    faults = [1]

    def dying_once(self: LogWriter, rows: Any) -> None:
        if faults:
            faults.pop()
            raise WriterFault("the writer thread is killed")
        store(self, rows)

    monkeypatch.setattr(LogWriter, "_store", dying_once)
    with caplog.at_level(logging.ERROR, logger="llmkit.runlog"):
        runlog.start()
        held = record()
        runlog.log(held)
        assert runlog.flush(timeout=10)
    assert runlog.get(held.trace_id) is not None, "the dead writer's batch was lost"
    health = runlog.health()
    assert (health["restarts"], health["alive"], health["last_error"]) == (1, True, "WriterFault")
    assert any("writer thread died" in r.getMessage() for r in caplog.records)
    later = record()
    runlog.log(later)
    runlog.close()
    assert runlog.get(later.trace_id) is not None


def test_a_batch_that_kills_two_writers_is_given_up_and_the_log_goes_on(
    db: DurableStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from llmkit.runlog_writer import LogWriter

    runlog = RunLog(db, batch_ms=60_000)
    store = LogWriter._store

    def poisoned(self: LogWriter, rows: Any) -> None:
        if any(row.values[0] == "poison" for row in rows):
            raise WriterFault("this batch kills every writer")
        store(self, rows)

    monkeypatch.setattr(LogWriter, "_store", poisoned)
    runlog.log(record(trace_id="poison"))
    runlog.log(record(trace_id="same-batch"))
    with caplog.at_level(logging.ERROR, logger="llmkit.runlog"):
        runlog.start()
        assert runlog.flush(timeout=20)
    health = runlog.health()
    assert (health["restarts"], health["rows_lost"], health["alive"]) == (2, 2, True)
    assert any("poison" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)
    later = record()
    runlog.log(later)
    runlog.close()
    assert runlog.get(later.trace_id) is not None
    assert runlog.get("poison") is None


def test_health_says_degraded_while_a_batch_keeps_failing(
    db: DurableStore, store_outage: Outage
) -> None:
    runlog = RunLog(db, batch_ms=5)
    runlog.start()
    assert runlog.health()["status"] == "ok"
    store_outage.begin()
    runlog.log(kept := record())
    assert poll(lambda: runlog.health()["status"] == "degraded")
    health = runlog.health()
    assert health["last_error"] == store_outage.error_name
    assert health["retrying_for_s"] is not None and health["alive"]
    store_outage.end()
    assert runlog.flush(timeout=10)
    health = runlog.health()
    assert (health["status"], health["retrying_for_s"]) == ("ok", None)
    assert runlog.get(kept.trace_id) is not None
    runlog.close()
    assert runlog.health()["status"] == "ok", "a closed log is stopped, not degraded"


# -- durable -------------------------------------------------------------------------------


def test_log_committed_returns_once_the_row_is_in_the_database(
    db: DurableStore, durable_url: str
) -> None:
    # A window of a minute: only the waiting caller can cut it short.
    runlog = RunLog(db, batch_ms=60_000, durable_wait_s=30)
    runlog.start()
    seen: list[int] = []

    async def main() -> None:
        for _ in range(5):
            r = record()
            await runlog.log_committed(r)
            # Another connection, as after a crash: the row is committed, not just queued.
            other = open_durable(durable_url)
            try:
                count = (
                    other.reader()
                    .execute("SELECT COUNT(*) FROM run_log WHERE trace_id = ?", (r.trace_id,))
                    .fetchone()[0]
                )
            finally:
                other.close()
            seen.append(count)

    asyncio.run(main())
    assert seen == [1] * 5
    runlog.close()


def test_concurrent_durable_callers_share_commits(db: DurableStore) -> None:
    runlog = RunLog(db, durable=True)
    runlog.start()
    records = [record() for _ in range(200)]

    async def main() -> None:
        await asyncio.gather(*(runlog.log_committed(r) for r in records))

    asyncio.run(main())
    assert runlog.count() == 200
    assert runlog.batches_written < 200, "every durable row took a commit of its own"
    runlog.close()


def test_a_durable_wait_that_outlasts_the_writer_is_an_error_and_the_row_stays_queued(
    db: DurableStore, store_outage: Outage
) -> None:
    from llmkit.errors import RunLogUnavailable

    runlog = RunLog(db, durable=True, durable_wait_s=0.3)
    runlog.start()
    store_outage.begin()
    late = record()
    with pytest.raises(RunLogUnavailable) as info:
        asyncio.run(runlog.log_committed(late))
    assert late.trace_id in info.value.message
    assert info.value.status == 503
    store_outage.end()
    assert runlog.flush(timeout=10)
    assert runlog.get(late.trace_id) is not None
    runlog.close()


def test_a_database_from_before_the_notes_migration_keeps_its_rows(durable_url: str) -> None:
    from llmkit.runlog_schema import MIGRATIONS

    old = open_durable(durable_url)
    old.migrate(MIGRATIONS, stop_before="m002_truncated_notes_and_rejects")
    with old.write() as conn:
        conn.execute(
            "INSERT INTO run_log (trace_id, prompt_key, model, request, status, source, created_at)"
            " VALUES ('old', 'p', 'm', '{\"messages\": []}', 'ok', 'api', ?)",
            (at(1),),
        )
    old.close()
    db = open_durable(durable_url)
    try:
        runlog = RunLog(db)
        row = runlog.get("old")
        assert row is not None
        assert (row["request"], row["truncated"], row["log_notes"]) == ({"messages": []}, [], [])
        runlog.close()
    finally:
        db.close()


def test_wal_checkpoints_run_beside_the_writer_not_in_its_commits(
    sqlite_db: Database,
) -> None:
    db, db_path = sqlite_db, Path(sqlite_db.path)

    def auto_checkpoint_pages() -> int:
        with db.write() as conn:
            return int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    runlog = RunLog(db, batch_ms=5)
    runlog.start()
    assert auto_checkpoint_pages() == 0, "a commit could still fsync a checkpoint"
    size_before = db_path.stat().st_size
    for _ in range(2000):
        runlog.log(record(response="x" * 2000))
    assert runlog.flush()
    # The rows reach the database file itself, not only the WAL: the checkpointer copied them.
    assert poll(lambda: db_path.stat().st_size > size_before + 2000 * 2000)
    runlog.close()
    assert auto_checkpoint_pages() == 1000


def test_a_cut_json_string_stays_a_string_that_reads_back_as_its_beginning(
    db: DurableStore,
) -> None:
    runlog = RunLog(db, field_max_bytes=1024)
    long_text = record(response="é\n" * 2000)  # escapes and two-byte characters
    runlog.log(long_text)
    runlog.close()
    row = runlog.get(long_text.trace_id)
    assert row is not None
    assert row["truncated"] == ["response"]
    kept = row["response"]
    assert isinstance(kept, str) and kept and ("é\n" * 2000).startswith(kept)
    stored = (
        db.reader()
        .execute("SELECT response FROM run_log WHERE trace_id = ?", (long_text.trace_id,))
        .fetchone()[0]
    )
    assert len(stored.encode("utf-8")) <= 1024 and json.loads(stored) == kept
