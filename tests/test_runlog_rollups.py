"""The run log at scale: rollups that always equal a recount of the rows (after random batches,
a backfill of an old log, and kill -9 of the writer mid-batch), per-version stats read from
them, keyset pages that cover every row exactly once while rows are written, and filters.

The recount here is Python over the rows as stored, not the rollups' own SQL, so the two are
independent ways to the same figures. Every test of the store runs on each durable backend
(SQLite and PostgreSQL, see tests/pg.py)."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmkit import runlog_rollup
from llmkit.db import DurableStore, open_durable
from llmkit.errors import BadRequest
from llmkit.runlog import RunLog
from llmkit.runlog_query import decode_cursor
from llmkit.runlog_record import COLUMNS, RunRecord, to_row
from llmkit.runlog_rollup import bucket_of, bucket_value, version_key
from llmkit.runlog_schema import MIGRATIONS
from tests.helpers import poll, put_unshaped_row

SHAS = {n: f"{n}{n}{n}{n}abcd" + "0" * 32 for n in range(1, 4)}
BLOB = "b10b" + "0" * 36


@pytest.fixture
def db_path(durable_url: str) -> str:
    """This test's durable store: a SQLite path or a PostgreSQL URL."""
    return durable_url


@pytest.fixture
def db(durable_db: DurableStore) -> DurableStore:
    return durable_db


def random_record(rng: random.Random, **fields: Any) -> RunRecord:
    """A record over a few prompts, versions (a draft among them), models, statuses and
    sources, with latency, tokens and cost each sometimes missing."""
    number = rng.choice([1, 2, 3, None])
    values: dict[str, Any] = {
        "prompt_key": rng.choice(["a", "b", "support/triage"]),
        "model": rng.choice(["m1", "m2"]),
        "request": {"messages": []},
        "status": rng.choice(["ok", "ok", "ok", "error", "cancelled"]),
        "source": rng.choice(["api", "api", "ui", "eval", "judge"]),
        "version_number": number,
        "version_sha": SHAS[number] if number else None,
        "draft": number is None,
        "draft_blob": BLOB if number is None else None,
        "latency_ms": rng.choice([None, rng.randint(0, 120_000), rng.random() * 50]),
        "ttft_ms": rng.choice([None, rng.randint(0, 5000)]),
        "input_tokens": rng.choice([None, rng.randint(0, 10_000)]),
        "output_tokens": rng.choice([None, rng.randint(0, 10_000)]),
        "reasoning_tokens": rng.choice([None, 0, rng.randint(0, 100)]),
        "cost": rng.choice([None, round(rng.random(), 6)]),
        "created_at": f"2024-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00.000Z",
    }
    values.update(fields)
    return RunRecord(**values)


def recount(conn: Any) -> tuple[dict[tuple, dict[str, Any]], Counter[tuple]]:
    """The rollups' figures, counted again in Python from every stored row."""
    totals: dict[tuple, dict[str, Any]] = {}
    histogram: Counter[tuple] = Counter()
    for row in conn.execute("SELECT * FROM run_log"):
        vkey = version_key(
            row["version_number"], row["version_sha"], bool(row["draft"]), row["draft_blob"]
        )
        key = (row["prompt_key"], vkey, row["model"], row["status"], row["source"])
        entry = totals.setdefault(
            key,
            {
                "n": 0,
                "latency_n": 0,
                "ttft_n": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "reasoning_tokens": 0,
                "cost": None,
                "first_at": row["created_at"],
                "last_at": row["created_at"],
            },
        )
        entry["n"] += 1
        for name in ("input_tokens", "output_tokens", "reasoning_tokens"):
            entry[name] += row[name] or 0
        if row["cost"] is not None:
            entry["cost"] = (entry["cost"] or 0) + row["cost"]
        entry["first_at"] = min(entry["first_at"], row["created_at"])
        entry["last_at"] = max(entry["last_at"], row["created_at"])
        for metric in runlog_rollup.METRICS:
            if row[metric] is not None:
                entry[metric.replace("_ms", "_n")] += 1
                if row["source"] != "judge":
                    histogram[(row["prompt_key"], vkey, metric, bucket_of(row[metric]))] += 1
    return totals, histogram


def rolled_up(conn: Any) -> tuple[dict[tuple, dict[str, Any]], Counter[tuple]]:
    totals = {}
    for row in conn.execute("SELECT * FROM run_log_totals"):
        key = (row["prompt_key"], row["version_key"], row["model"], row["status"], row["source"])
        totals[key] = {
            name: row[name]
            for name in (
                "n",
                "latency_n",
                "ttft_n",
                "input_tokens",
                "output_tokens",
                "reasoning_tokens",
                "cost",
                "first_at",
                "last_at",
            )
        }
    histogram: Counter[tuple] = Counter()
    for row in conn.execute(
        "SELECT prompt_key, version_key, metric, bucket, n FROM run_log_latency"
    ):
        histogram[tuple(row[:4])] = row[4]
    return totals, histogram


def assert_rollups_match(path: str) -> int:
    """Rollups equal the recount (costs to float rounding); returns the number of rows."""
    store = open_durable(path)
    conn = store.reader()
    try:
        expected_totals, expected_histogram = recount(conn)
        totals, histogram = rolled_up(conn)
        rows = conn.execute("SELECT COUNT(*) FROM run_log").fetchone()[0]
        counts = {
            (model, status): n
            for model, status, n in conn.execute("SELECT model, status, n FROM run_log_counts")
        }
        expected_counts = {
            (model, status): n
            for model, status, n in conn.execute(
                "SELECT model, status, COUNT(*) FROM run_log GROUP BY model, status"
            )
        }
    finally:
        store.close()
    assert totals.keys() == expected_totals.keys()
    for key, expected in expected_totals.items():
        got = totals[key]
        cost, expected_cost = got.pop("cost"), expected.pop("cost")
        assert got == expected, key
        assert (cost is None) == (expected_cost is None), key
        if cost is not None:
            assert math.isclose(cost, expected_cost, rel_tol=1e-9, abs_tol=1e-12), key
    assert histogram == expected_histogram
    assert counts == expected_counts
    return int(rows)


def test_rollups_equal_a_recount_after_random_batches_with_rejected_rows(
    db: DurableStore, db_path: str
) -> None:
    rng = random.Random(11)
    runlog = RunLog(db, batch_ms=1, max_batch=37)
    runlog.start()
    logged = []
    for i in range(1500):
        record = random_record(rng)
        if i % 97 == 0 and logged:
            # A duplicate trace id: the row is set aside, and must not count twice.
            record.trace_id = rng.choice(logged)
        logged.append(record.trace_id)
        runlog.log(record)
        if i % 300 == 0:
            assert runlog.flush()
    runlog.close()
    assert runlog.rows_rejected > 0
    assert assert_rollups_match(db_path) == runlog.rows_written


def test_the_migration_backfills_rollups_for_a_log_written_before_them(db_path: str) -> None:
    rng = random.Random(5)
    old = open_durable(db_path)
    old.migrate(MIGRATIONS, stop_before="m006_rollups_and_filter_indexes")
    # Rows as an older writer stored them: without ids, which the table gives them.
    columns = [name for name in COLUMNS if name != "id"]
    at = COLUMNS.index("id")
    rows = [to_row(random_record(rng), 1 << 20) for _ in range(800)]
    rows = [row[:at] + row[at + 1 :] for row in rows]
    marks = ", ".join("?" for _ in columns)
    with old.write() as conn:
        conn.executemany(f"INSERT INTO run_log ({', '.join(columns)}) VALUES ({marks})", rows)
    old.close()
    db = open_durable(db_path)
    runlog = RunLog(db)  # opening it migrates: the backfill
    try:
        assert assert_rollups_match(db_path) == 800
        runlog.log(random_record(rng))
        runlog.flush()
        assert assert_rollups_match(db_path) == 801
    finally:
        runlog.close()
        db.close()


WRITER = textwrap.dedent(
    """
    import random, sys
    from llmkit.db import open_durable
    from llmkit.runlog import RunLog
    from tests.test_runlog_rollups import random_record

    rng = random.Random(int(sys.argv[2]))
    runlog = RunLog(open_durable(sys.argv[1]), batch_ms=2, max_batch=200)
    runlog.start()
    for _ in range(200_000):
        for _ in range(50):
            runlog.log(random_record(rng))
        runlog.flush()
    """
)


def logged_rows(store: DurableStore) -> int:
    return int(store.reader().execute("SELECT COUNT(*) FROM run_log").fetchone()[0])


def kill_writer_mid_batch(path: str, seed: int, rows_before: int) -> None:
    """Start a process that logs batch after batch, and SIGKILL it once it has written
    2,000 more rows, at a random instant of its writing."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(seed)], env=env)
    store = open_durable(path)
    try:
        assert poll(lambda: logged_rows(store) > rows_before + 2000, timeout_s=60)
        time.sleep(random.Random(seed).random() * 0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        store.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_equal_a_recount_after_a_kill_9_of_the_writer_mid_batch(
    db_path: str, seed: int
) -> None:
    RunLog(open_durable(db_path)).close()  # migrated, so rows can be counted from the start
    before = 0
    for round_ in range(2):  # the second kill is of a log that already has rollups
        kill_writer_mid_batch(db_path, seed * 10 + round_, before)
        after = assert_rollups_match(db_path)
        assert after > before
        before = after


def exact_percentile(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[-(-p * len(ordered) // 100) - 1]


def test_stats_come_from_rollups_and_large_versions_use_the_histogram(
    db: DurableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    runlog = RunLog(db, batch_ms=1)
    latencies = [rng.choice([rng.randint(1, 20), rng.randint(100, 90_000)]) for _ in range(400)]
    for latency in latencies:
        runlog.log(
            random_record(
                rng,
                prompt_key="p",
                version_number=1,
                version_sha=SHAS[1],
                draft=False,
                draft_blob=None,
                source="api",
                latency_ms=latency,
                ttft_ms=latency // 2,
            )
        )
    runlog.log(random_record(rng, prompt_key="p", source="judge", latency_ms=10**7))
    runlog.close()
    exact = runlog.stats("p")
    monkeypatch.setattr(runlog_rollup, "EXACT_PERCENTILE_MAX", 50)
    approximate = runlog.stats("p")
    figures = ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms")
    for mine, theirs in zip(exact, approximate, strict=True):
        assert {k: v for k, v in mine.items() if k not in figures} == {
            k: v for k, v in theirs.items() if k not in figures
        }
    v1 = next(s for s in approximate if s["version_number"] == 1)
    assert v1["count"] == 400
    for name, values, p in (
        ("latency_p50_ms", latencies, 50),
        ("latency_p95_ms", latencies, 95),
        ("ttft_p50_ms", [x // 2 for x in latencies], 50),
    ):
        true = exact_percentile(values, p)
        assert next(s for s in exact if s["version_number"] == 1)[name] == true
        assert abs(v1[name] - true) <= max(1, 0.05 * true), (name, v1[name], true)


def test_a_bucket_is_reported_within_five_percent_of_any_value_in_it() -> None:
    for value in [*range(200), *range(200, 3_600_000, 997)]:
        shown = bucket_value(bucket_of(value))
        assert abs(shown - value) <= max(1, 0.05 * value), value
    assert bucket_value(bucket_of(10**9)) == runlog_rollup.BOUNDARIES[-1]


def test_token_sums_past_64_bits_never_stop_the_writer(db: DurableStore) -> None:
    runlog = RunLog(db, batch_ms=1)
    for _ in range(3):
        runlog.log(random_record(random.Random(1), input_tokens=2**63 - 1, prompt_key="big"))
    runlog.close()
    assert runlog.rows_written == 3 and runlog.health()["rows_lost"] == 0
    [stats] = runlog.stats("big")
    assert stats["input_tokens"] == pytest.approx(3 * (2**63 - 1))


# -- keyset pages ------------------------------------------------------------------------


def test_keyset_pages_cover_every_row_once_while_rows_are_written(db: DurableStore) -> None:
    rng = random.Random(8)
    runlog = RunLog(db, batch_ms=1)
    runlog.start()
    # Few distinct times: many rows tie on created_at and are ordered by id.
    for _ in range(700):
        runlog.log(random_record(rng, created_at=f"2024-05-01T10:00:0{rng.randint(0, 3)}.000Z"))
    assert runlog.flush()
    before = {row["trace_id"] for row in runlog.list(page_size=500)} | {
        row["trace_id"] for row in runlog.list(page=2, page_size=500)
    }
    assert len(before) == 700
    stop = threading.Event()

    def write() -> None:
        writer_rng = random.Random(9)
        for i in range(2000):
            if stop.is_set():
                return
            # Newer rows, and rows behind the pages already read.
            minute = writer_rng.choice(["09:59:59", "10:00:02", "11:00:00"])
            runlog.log(random_record(writer_rng, created_at=f"2024-05-01T{minute}.{i % 1000:03d}Z"))
            time.sleep(0.0005)

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[str] = []
    cursor = None
    try:
        for _ in range(1000):
            page = runlog.page_after(cursor, limit=23)
            seen.extend(row["trace_id"] for row in page.rows)
            cursor = page.next_cursor
            if cursor is None:
                break
            time.sleep(0.001)
    finally:
        stop.set()
        writer.join()
        runlog.close()
    assert cursor is None
    assert len(seen) == len(set(seen)), "a row was shown twice"
    assert before <= set(seen), "a row was skipped"


def test_numbered_pages_and_cursor_pages_agree_under_every_filter(db: DurableStore) -> None:
    rng = random.Random(4)
    runlog = RunLog(db, batch_ms=1)
    for _ in range(300):
        runlog.log(random_record(rng))
    runlog.close()
    filters: list[dict[str, Any]] = [
        {},
        {"prompt": "a"},
        {"model": "m2"},
        {"status": "error"},
        {"version": 2},
        {"version": "draft"},
        {"version": SHAS[3][:6]},
        {"since": "2024-05-10", "until": "2024-05-20T12:00:00Z"},
        {"prompt": "b", "model": "m1", "status": "ok", "since": "2024-05-14"},
    ]
    for where in filters:
        everything = runlog.list(page_size=500, **where)
        assert runlog.count(**where) == len(everything), where
        walked: list[dict[str, Any]] = []
        cursor = None
        for _ in range(100):
            page = runlog.page_after(cursor, limit=17, **where)
            walked.extend(page.rows)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert walked == everything, where
        numbered = runlog.numbered_page(page=2, page_size=17, **where)
        assert numbered.rows == everything[17:34], where
        if len(everything) > 34:
            following = runlog.page_after(numbered.next_cursor, limit=17, **where)
            assert following.rows == everything[34:51], where
        else:
            assert numbered.next_cursor is None, where


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda log: log.page_after("not-a-cursor"), "cursor"),
        (lambda log: log.page_after("WzEsMl0"), "cursor"),  # [1,2]: no time in it
        (lambda log: log.page_after(None, limit=0), "limit"),
        (lambda log: log.page_after(None, model=""), "model"),
        (lambda log: log.count(model=""), "model"),
        (lambda log: log.page_after(None, since="soon"), "since"),
        (lambda log: log.numbered_page(page=0), "page"),
    ],
)
def test_bad_paging_values_are_bad_requests_naming_the_parameter(
    db: DurableStore, call: Any, param: str
) -> None:
    runlog = RunLog(db)
    with pytest.raises(BadRequest) as info:
        call(runlog)
    assert info.value.param == param


def test_a_cursor_is_a_position_that_round_trips() -> None:
    from llmkit.runlog_query import encode_cursor

    cursor = encode_cursor("2024-05-01T10:00:00.000Z", 42)
    assert decode_cursor(cursor) == ("2024-05-01T10:00:00.000Z", 42)


def test_a_row_of_unshaped_values_is_rolled_up_from_what_was_stored(
    db: DurableStore, db_path: str
) -> None:
    """A row that reached the writer without shaping (text where numbers go): SQLite stores
    the numbers its column affinity makes of them (PostgreSQL parses the text as its column's
    type), and the rollups count what it stored."""
    runlog = RunLog(db, batch_ms=1)
    put_unshaped_row(
        runlog,
        prompt_key="p",
        request="{}",
        created_at="2024-05-01T10:00:00.000Z",
        input_tokens="7",
        latency_ms="15",
    )
    runlog.log(random_record(random.Random(2), prompt_key="p"))
    runlog.close()
    assert runlog.rows_written == 2 and runlog.health()["rows_lost"] == 0
    assert assert_rollups_match(db_path) == 2
    assert runlog.get("unshaped")["input_tokens"] == 7  # type: ignore[index]
