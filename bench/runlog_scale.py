"""The run log at 1,000,000 rows on SQLite: stats, a deep page, count and rows/s written, each
beside a baseline measured in the same run on the same data.

Run by hand, never by the test suite:

    python bench/runlog_scale.py                       # 1,000,000 rows in a temp dir
    python bench/runlog_scale.py --rows 200000 --out /tmp/runlog_scale.json

The log is generated straight into a database at the schema before the rollups (migrations
up to m005): 200 prompts (the first takes a fifth of the calls, the worst case for its
stats), 1-5 versions each over 30 days, two models, 90% ok / 8% error / 2% cancelled,
log-normal latencies. Opening it with RunLog then runs the rollup migration (its backfill is
timed). Baselines are what the code did before the rollups: the GROUP BY over the prompt's
rows plus the exact percentile walks (stats), COUNT(*) (count), LIMIT/OFFSET over whole rows
(a deep page), and the writer without the rollups on a copy of the database without
the four filter indexes (rows/s; the indexes without the rollups are measured too). Query
figures are the median of `--runs` runs, new and baseline interleaved.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from llmkit.db import Database, DurableStore
from llmkit.runlog import RunLog
from llmkit.runlog_record import COLUMNS, RunRecord, to_row
from llmkit.runlog_schema import MIGRATIONS

PROMPTS = 200
FILTER_INDEXES = (
    "run_log_model_created_at",
    "run_log_status_created_at",
    "run_log_version_created_at",
    "run_log_prompt_status_created_at",
)
HOT_SHARE = 0.2
ROLLUP_MIGRATION = "m006_rollups_and_filter_indexes"
DAYS = 30
REQUEST = json.dumps({"messages": [{"role": "user", "content": "Where is my parcel?"}]})
RESPONSE = json.dumps("It left the depot this morning.")

OLD_STATS = """
SELECT version_number, version_sha, draft, draft_blob, COUNT(*) AS count,
       SUM(status = 'error') AS error_count, COUNT(latency_ms) AS latency_n,
       COUNT(ttft_ms) AS ttft_n, COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
       COALESCE(SUM(reasoning_tokens), 0), SUM(cost), MIN(created_at), MAX(created_at)
FROM run_log WHERE prompt_key = ? AND source != 'judge'
GROUP BY version_number, version_sha, draft, draft_blob
"""
OLD_PERCENTILE = (
    "SELECT {column} FROM run_log WHERE prompt_key = ? AND version_number IS ?"
    " AND version_sha IS ? AND draft = ? AND draft_blob IS ? AND {column} IS NOT NULL"
    " AND source != 'judge' ORDER BY {column} LIMIT 1 OFFSET ?"
)
OLD_PAGE = (
    f"SELECT {', '.join(COLUMNS)} FROM run_log ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
)


def sha(prompt: int, version: int) -> str:
    return f"{prompt:04d}{version:02d}" + "ab" * 17


def call_rows(rows: int, seed: int = 7, keys: list[str] | None = None) -> Iterator[tuple[Any, ...]]:
    """`rows` calls in COLUMNS order, oldest first: the same rows for the same seed, whichever
    store they go into. Prompt n is `prompt/n`, or `keys[n % len(keys)]` when `keys` are given
    (a generated repository's, so that the calls belong to prompts that exist)."""
    rng = random.Random(seed)
    versions = [rng.randint(1, 5) for _ in range(PROMPTS)]
    span_ms = DAYS * 86_400_000
    start_ms = 1_714_521_600_000  # 2024-05-01
    for i in range(rows):
        prompt = 0 if rng.random() < HOT_SHARE else rng.randrange(PROMPTS)
        at_ms = start_ms + span_ms * i // rows + rng.randrange(1000)
        # Later calls run later versions.
        version = 1 + versions[prompt] * i // rows
        status = rng.choices(("ok", "error", "cancelled"), (90, 8, 2))[0]
        latency = int(rng.lognormvariate(6.5, 0.8))
        model = rng.choice(("openai/gpt-4o-mini", "anthropic/claude-3-5-haiku"))
        values = {
            "id": i + 1,
            "trace_id": f"{i:032x}",
            "prompt_key": keys[prompt % len(keys)] if keys else f"prompt/{prompt:03d}",
            "version_number": version,
            "version_sha": sha(prompt, version),
            "draft": 0,
            "draft_blob": None,
            "model": model,
            "model_name": model.split("/", 1)[1],
            "request": REQUEST,
            "response": RESPONSE if status == "ok" else None,
            "status": status,
            "error": None if status == "ok" else "upstream said no",
            "http_status": 200 if status == "ok" else 502,
            "input_tokens": rng.randint(20, 2000),
            "output_tokens": rng.randint(5, 800),
            "reasoning_tokens": 0,
            "cost": rng.random() / 1000,
            "latency_ms": latency,
            "ttft_ms": latency // 3,
            "stream": 0,
            "api_key_id": 1,
            "source": rng.choices(("api", "ui", "eval", "judge"), (80, 10, 8, 2))[0],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_ms // 1000))
            + f".{at_ms % 1000:03d}Z",
            "truncated": None,
            "log_notes": None,
        }
        yield tuple(values[name] for name in COLUMNS)


def generate(path: Path, rows: int, seed: int = 7, keys: list[str] | None = None) -> float:
    """Write `rows` calls into a database at the pre-rollup schema; returns seconds."""
    started = time.perf_counter()
    db = Database(path)
    db.migrate(MIGRATIONS, stop_before=ROLLUP_MIGRATION)
    marks = ", ".join("?" for _ in COLUMNS)
    sql = f"INSERT INTO run_log ({', '.join(COLUMNS)}) VALUES ({marks})"
    chunk: list[tuple[Any, ...]] = []
    with db.write() as conn:
        # Indexes built after the rows, as one sort each, rather than row by row.
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'run_log'"
            " AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
        conn.execute("PRAGMA cache_size = -262144")
        for row in call_rows(rows, seed, keys):
            chunk.append(row)
            if len(chunk) == 10_000:
                conn.executemany(sql, chunk)
                chunk.clear()
        conn.executemany(sql, chunk)
        for _, create in indexes:
            conn.execute(create)
        # The rows brought their ids: the counter moves past them, as an import would.
        conn.execute("UPDATE run_log_ids SET next_id = (SELECT MAX(id) + 1 FROM run_log)")
    db.close()
    return time.perf_counter() - started


def old_stats(
    db: DurableStore, prompt: str, stats_sql: str = OLD_STATS, percentile_sql: str = OLD_PERCENTILE
) -> list[tuple]:
    """A prompt's stats as the code did before the rollups (the SQL is the backend's)."""
    reader = db.reader()
    result = []
    for row in reader.execute(stats_sql, (prompt,)).fetchall():
        version = (prompt, row[0], row[1], row[2], row[3])
        figures = []
        for column, p, n in (("latency_ms", 50, row[6]), ("latency_ms", 95, row[6])):
            rank = -(-p * n // 100)
            sql = percentile_sql.format(column=column)
            figures.append(reader.execute(sql, (*version, rank - 1)).fetchone()[0])
        rank = -(-50 * row[7] // 100)
        sql = percentile_sql.format(column="ttft_ms")
        figures.append(reader.execute(sql, (*version, rank - 1)).fetchone()[0])
        result.append((tuple(row), figures))
    return result


def median_s(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def pair(name: str, new: Callable[[], object], old: Callable[[], object], runs: int) -> dict:
    """Median of new and baseline, interleaved run by run."""
    new_times, old_times = [], []
    for _ in range(runs):
        for fn, times in ((new, new_times), (old, old_times)):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    value, baseline = statistics.median(new_times), statistics.median(old_times)
    row = {
        "figure": name,
        "ms": round(value * 1000, 3),
        "baseline_ms": round(baseline * 1000, 3),
        "speedup": round(baseline / value, 1) if value else None,
    }
    print(
        f"{name:<44} {row['ms']:>10.3f} ms   baseline {row['baseline_ms']:>10.3f} ms"
        f"   x{row['speedup']}"
    )
    return row


def rows_per_s(db: DurableStore, count: int, rollups: bool) -> float:
    """Rows/s through RunLog's writer (queued, then flush()), with or without the rollups."""
    runlog = RunLog(db, batch_ms=20, max_batch=500)
    if not rollups:
        runlog._writer._on_insert = None  # the writer as it was before the rollups
    runlog.start()
    rng = random.Random(count + rollups)
    records = [
        RunRecord(
            prompt_key=f"prompt/{rng.randrange(PROMPTS):03d}",
            version_number=1,
            version_sha=sha(0, 1),
            model="openai/gpt-4o-mini",
            request={"messages": [{"role": "user", "content": "hi"}]},
            response="hello",
            latency_ms=rng.randint(50, 3000),
            input_tokens=10,
            output_tokens=5,
            cost=0.0001,
        )
        for _ in range(count)
    ]
    # Shaped beforehand: the figure is the writer's, not the callers' shaping.
    rows = [to_row(record, runlog.field_max_bytes) for record in records]
    started = time.perf_counter()
    for row in rows:
        runlog._writer.put(row)
    assert runlog.flush(timeout=600)
    elapsed = time.perf_counter() - started
    runlog.close()
    return count / elapsed


def sqlite_rows_per_s(path: Path, count: int, rollups: bool) -> float:
    db = Database(path)
    try:
        return rows_per_s(db, count, rollups)
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--write-rows", type=int, default=50_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "runlog_scale.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "llmkit.db"
        print(f"generating {args.rows:,} rows ...", flush=True)
        generated = generate(path, args.rows)
        print(f"generated in {generated:.1f} s")
        started = time.perf_counter()
        db = Database(path)
        RunLog(db).close()  # opening migrates: the rollup backfill
        backfill = time.perf_counter() - started
        print(f"rollup migration (backfill of {args.rows:,} rows): {backfill:.1f} s")
        runlog = RunLog(db)
        hot = "prompt/000"
        hot_rows = runlog.count(prompt=hot)
        print(f"{hot} has {hot_rows:,} rows\n")
        reader = db.reader()
        deep = args.rows * 9 // 10
        # The cursor of the row just above the deep page: what a client paging by cursor holds.
        above = reader.execute(
            "SELECT created_at, id FROM run_log ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
            (deep - 1,),
        ).fetchone()
        from llmkit.runlog_query import encode_cursor

        cursor = encode_cursor(above[0], above[1])
        assert runlog.page_after(cursor, limit=50).rows == runlog.list(
            page=deep // 50 + 1, page_size=50
        )
        results = [
            pair(f"stats({hot})", lambda: runlog.stats(hot), lambda: old_stats(db, hot), args.runs),
            pair(
                f"page of 50 at row {deep:,} by cursor",
                lambda: runlog.page_after(cursor, limit=50),
                lambda: reader.execute(OLD_PAGE, (50, deep)).fetchall(),
                args.runs,
            ),
            pair(
                f"page of 50 at row {deep:,} by number",
                lambda: runlog.list(page=deep // 50 + 1, page_size=50),
                lambda: reader.execute(OLD_PAGE, (50, deep)).fetchall(),
                args.runs,
            ),
            pair(
                "first page of 50 (prompt + status filter)",
                lambda: runlog.page_after(None, limit=50, prompt="prompt/007", status="error"),
                lambda: reader.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM run_log WHERE prompt_key = ? AND"
                    " status = ? ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET 0",
                    ("prompt/007", "error"),
                ).fetchall(),
                args.runs,
            ),
            pair(
                "count (all)",
                lambda: runlog.count(),
                lambda: reader.execute("SELECT COUNT(*) FROM run_log").fetchone(),
                args.runs,
            ),
            pair(
                f"count (prompt={hot}, status=error)",
                lambda: runlog.count(prompt=hot, status="error"),
                lambda: reader.execute(
                    "SELECT COUNT(*) FROM run_log WHERE prompt_key = ? AND status = 'error'",
                    (hot,),
                ).fetchone(),
                args.runs,
            ),
        ]
        runlog.close()
        db.close()
        # The baseline is the log as it was: a copy without the rollup statements in the
        # writer and without the three filter indexes.
        before = Path(tmp) / "before.db"
        shutil.copyfile(path, before)
        conn = sqlite3.connect(before)
        for name in FILTER_INDEXES:
            conn.execute(f"DROP INDEX {name}")
        conn.close()
        # Interleaved: now; as it was; and, to tell the two costs apart, the filter indexes
        # without the rollups.
        writes: dict[str, list[float]] = {"now": [], "before": [], "indexes only": []}
        for _ in range(3):
            writes["now"].append(sqlite_rows_per_s(path, args.write_rows, True))
            writes["before"].append(sqlite_rows_per_s(before, args.write_rows, False))
            writes["indexes only"].append(sqlite_rows_per_s(path, args.write_rows, False))
        with_rollups = statistics.median(writes["now"])
        without = statistics.median(writes["before"])
        indexes_only = statistics.median(writes["indexes only"])
        print(
            f"{'rows/s written (queue + flush)':<44} {with_rollups:>10,.0f}      baseline"
            f" {without:>10,.0f}      x{with_rollups / without:.2f}"
            f"   (filter indexes alone: {indexes_only:,.0f})"
        )
    report = {
        "rows": args.rows,
        "hot_prompt_rows": hot_rows,
        "generate_s": round(generated, 1),
        "backfill_s": round(backfill, 1),
        "queries": results,
        "rows_per_s": round(with_rollups),
        "rows_per_s_baseline": round(without),
        "rows_per_s_indexes_only": round(indexes_only),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
