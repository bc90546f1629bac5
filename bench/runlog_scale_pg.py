"""The run log at 1,000,000 rows on PostgreSQL: stats, a deep page, count and rows/s written,
each beside two baselines measured in the same run: the same queries as the code made them
before the rollups (GROUP BY, OFFSET, COUNT(*)) on the same PostgreSQL data, and the run log
on SQLite at the same row count (bench/runlog_scale.py's generator, same seed).

Run by hand, never by the test suite:

    python bench/runlog_scale_pg.py                  # a throwaway cluster, 1,000,000 rows
    python bench/runlog_scale_pg.py --rows 200000 --database-url postgresql://u@127.0.0.1/db

With no `--database-url`, a throwaway cluster is started in a temp folder (tests/pg.py's, from
Debian's binaries; as root it runs as an unprivileged user) and stopped at the end whatever
happened. A URL given must name an empty store: the run log's tables are made in it.

The rows go in by COPY (the store's insert_many) at the schema before the rollups, with the
indexes built after them; opening RunLog then migrates and backfills the rollups (timed, on
both backends). Query figures are the median of `--runs` runs, the three interleaved.
Rows/s is RunLog's writer (queued, then flush()) with the rollups, beside PostgreSQL's writer
without them and SQLite's with them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

from runlog_scale import (
    OLD_PAGE,
    ROLLUP_MIGRATION,
    call_rows,
    generate,
    old_stats,
    rows_per_s,
    sqlite_rows_per_s,
)

from llmkit.db import Database, DurableStore, open_durable
from llmkit.runlog import RunLog
from llmkit.runlog_query import encode_cursor
from llmkit.runlog_record import COLUMNS
from llmkit.runlog_schema import MIGRATIONS
from tests.pg import PgServer, pg_bin_dir, server_user

COPY_CHUNK = 20_000
HOT = "prompt/000"
# runlog_scale's baselines in PostgreSQL's SQL: booleans are not summed, NULLs are matched
# with IS NOT DISTINCT FROM.
PG_OLD_STATS = """
SELECT version_number, version_sha, draft, draft_blob, COUNT(*) AS count,
       COUNT(*) FILTER (WHERE status = 'error') AS error_count, COUNT(latency_ms) AS latency_n,
       COUNT(ttft_ms) AS ttft_n, COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
       COALESCE(SUM(reasoning_tokens), 0), SUM(cost), MIN(created_at), MAX(created_at)
FROM run_log WHERE prompt_key = ? AND source != 'judge'
GROUP BY version_number, version_sha, draft, draft_blob
"""
PG_OLD_PERCENTILE = (
    "SELECT {column} FROM run_log WHERE prompt_key = ? AND version_number IS NOT DISTINCT FROM ?"
    " AND version_sha IS NOT DISTINCT FROM ? AND draft = ? AND draft_blob IS NOT DISTINCT FROM ?"
    " AND {column} IS NOT NULL AND source != 'judge' ORDER BY {column} LIMIT 1 OFFSET ?"
)
OLD_FILTERED_PAGE = (
    f"SELECT {', '.join(COLUMNS)} FROM run_log WHERE prompt_key = ? AND status = ?"
    " ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET 0"
)


def generate_pg(db: DurableStore, rows: int, seed: int = 7) -> float:
    """runlog_scale's rows into PostgreSQL at the pre-rollup schema, by COPY; returns seconds."""
    started = time.perf_counter()
    db.migrate(MIGRATIONS, stop_before=ROLLUP_MIGRATION)
    with db.write() as conn:
        if conn.execute("SELECT COUNT(*) FROM run_log").fetchone()[0]:
            raise SystemExit("the store's run_log is not empty: give an empty store's URL")
        # Indexes built after the rows, as one sort each; the constraints' stay.
        indexes = conn.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = 'run_log'"
            " AND i.schemaname = current_schema() AND NOT EXISTS (SELECT 1 FROM pg_constraint"
            " c WHERE c.conname = i.indexname)"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")
    generated = call_rows(rows, seed)
    while chunk := list(itertools.islice(generated, COPY_CHUNK)):
        db.insert_many("run_log", COLUMNS, chunk)
    with db.write() as conn:
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for _, create in indexes:
            conn.execute(create)
        # The rows brought their ids: the counter moves past them, as an import would.
        conn.execute("UPDATE run_log_ids SET next_id = (SELECT MAX(id) + 1 FROM run_log)")
    db.execute_write("ANALYZE run_log")
    return time.perf_counter() - started


def trio(name: str, fns: dict[str, Callable[[], object]], runs: int) -> dict:
    """Medians of PostgreSQL now, PostgreSQL's old-style query and SQLite now, interleaved."""
    times: dict[str, list[float]] = {kind: [] for kind in fns}
    for _ in range(runs):
        for kind, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[kind].append(time.perf_counter() - started)
    ms = {kind: statistics.median(found) * 1000 for kind, found in times.items()}
    row = {
        "figure": name,
        "pg_ms": round(ms["pg"], 3),
        "pg_old_ms": round(ms["pg_old"], 3),
        "sqlite_ms": round(ms["sqlite"], 3),
        "speedup_vs_old": round(ms["pg_old"] / ms["pg"], 1),
        "pg_over_sqlite": round(ms["pg"] / ms["sqlite"], 2),
    }
    print(
        f"{name:<42} {row['pg_ms']:>9.3f} ms   old {row['pg_old_ms']:>9.3f} ms"
        f" (x{row['speedup_vs_old']})   sqlite {row['sqlite_ms']:>8.3f} ms"
        f" (pg/sqlite {row['pg_over_sqlite']})"
    )
    return row


def measure(args: argparse.Namespace, url: str, work: Path) -> dict:
    pg = open_durable(url)
    print(f"generating {args.rows:,} rows in PostgreSQL (COPY) ...", flush=True)
    pg_generated = generate_pg(pg, args.rows)
    print(f"  {pg_generated:.1f} s")
    path = work / "llmkit.db"
    print(f"generating {args.rows:,} rows in SQLite ...", flush=True)
    lite_generated = generate(path, args.rows)
    print(f"  {lite_generated:.1f} s")
    lite = Database(path)
    backfill = {}
    for name, db in (("postgresql", pg), ("sqlite", lite)):
        started = time.perf_counter()
        RunLog(db).close()  # opening migrates: the rollup backfill
        backfill[name] = time.perf_counter() - started
    print(
        f"rollup migration (backfill of {args.rows:,} rows): PostgreSQL"
        f" {backfill['postgresql']:.1f} s, SQLite {backfill['sqlite']:.1f} s"
    )
    pg_log, lite_log = RunLog(pg), RunLog(lite)
    hot_rows = pg_log.count(prompt=HOT)
    assert hot_rows == lite_log.count(prompt=HOT)
    print(f"{HOT} has {hot_rows:,} rows\n")
    pg_reader = pg.reader()
    deep = args.rows * 9 // 10
    above = pg_reader.execute(
        "SELECT created_at, id FROM run_log ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?",
        (deep - 1,),
    ).fetchone()
    cursor = encode_cursor(above[0], above[1])
    number = deep // 50 + 1
    assert pg_log.page_after(cursor, limit=50).rows == pg_log.list(page=number, page_size=50)
    queries = [
        trio(
            f"stats({HOT})",
            {
                "pg": lambda: pg_log.stats(HOT),
                "pg_old": lambda: old_stats(pg, HOT, PG_OLD_STATS, PG_OLD_PERCENTILE),
                "sqlite": lambda: lite_log.stats(HOT),
            },
            args.runs,
        ),
        trio(
            f"page of 50 at row {deep:,} by cursor",
            {
                "pg": lambda: pg_log.page_after(cursor, limit=50),
                "pg_old": lambda: pg_reader.execute(OLD_PAGE, (50, deep)).fetchall(),
                "sqlite": lambda: lite_log.page_after(cursor, limit=50),
            },
            args.runs,
        ),
        trio(
            f"page of 50 at row {deep:,} by number",
            {
                "pg": lambda: pg_log.list(page=number, page_size=50),
                "pg_old": lambda: pg_reader.execute(OLD_PAGE, (50, deep)).fetchall(),
                "sqlite": lambda: lite_log.list(page=number, page_size=50),
            },
            args.runs,
        ),
        trio(
            "first page of 50 (prompt + status filter)",
            {
                "pg": lambda: pg_log.page_after(
                    None, limit=50, prompt="prompt/007", status="error"
                ),
                "pg_old": lambda: pg_reader.execute(
                    OLD_FILTERED_PAGE, ("prompt/007", "error")
                ).fetchall(),
                "sqlite": lambda: lite_log.page_after(
                    None, limit=50, prompt="prompt/007", status="error"
                ),
            },
            args.runs,
        ),
        trio(
            "count (all)",
            {
                "pg": lambda: pg_log.count(),
                "pg_old": lambda: pg_reader.execute("SELECT COUNT(*) FROM run_log").fetchone(),
                "sqlite": lambda: lite_log.count(),
            },
            args.runs,
        ),
        trio(
            f"count (prompt={HOT}, status=error)",
            {
                "pg": lambda: pg_log.count(prompt=HOT, status="error"),
                "pg_old": lambda: pg_reader.execute(
                    "SELECT COUNT(*) FROM run_log WHERE prompt_key = ? AND status = 'error'",
                    (HOT,),
                ).fetchone(),
                "sqlite": lambda: lite_log.count(prompt=HOT, status="error"),
            },
            args.runs,
        ),
    ]
    pg_log.close()
    lite_log.close()
    lite.close()
    # Interleaved: PostgreSQL now; PostgreSQL's writer without the rollups; SQLite now.
    writes: dict[str, list[float]] = {"pg": [], "pg_old": [], "sqlite": []}
    for _ in range(3):
        writes["pg"].append(rows_per_s(pg, args.write_rows, True))
        writes["pg_old"].append(rows_per_s(pg, args.write_rows, False))
        writes["sqlite"].append(sqlite_rows_per_s(path, args.write_rows, True))
    pg.close()
    rate = {kind: statistics.median(found) for kind, found in writes.items()}
    print(
        f"{'rows/s written (queue + flush)':<42} {rate['pg']:>9,.0f}      old"
        f" {rate['pg_old']:>9,.0f}    (x{rate['pg'] / rate['pg_old']:.2f})   sqlite"
        f" {rate['sqlite']:>8,.0f}    (pg/sqlite {rate['pg'] / rate['sqlite']:.2f})"
    )
    return {
        "rows": args.rows,
        "hot_prompt_rows": hot_rows,
        "generate_s": {"postgresql": round(pg_generated, 1), "sqlite": round(lite_generated, 1)},
        "backfill_s": {name: round(seconds, 1) for name, seconds in backfill.items()},
        "queries": queries,
        "rows_per_s": round(rate["pg"]),
        "rows_per_s_without_rollups": round(rate["pg_old"]),
        "rows_per_s_sqlite": round(rate["sqlite"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--write-rows", type=int, default=50_000)
    parser.add_argument(
        "--database-url", default=None, help="an empty PostgreSQL store (default: a throwaway)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite file goes")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "runlog_scale_pg.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-scale-", dir=args.dir))
    server = None
    try:
        url = args.database_url
        if url is None:
            # A folder of its own: the server's user may not enter `work`.
            root = Path(tempfile.mkdtemp(prefix="llmkit-pg-"))
            server = PgServer(pg_bin_dir(), root, server_user())
            server.start()
            url = server.new_store()
        report = measure(args, url, work)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
