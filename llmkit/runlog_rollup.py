"""Rollups of the run log: per-version figures kept up to date as rows are written, so that
stats and counts never scan the log.

Three tables, all updated by the run-log writer in the transaction that inserts a batch
(`RollUp`), from the very rows that transaction stored: a crash leaves rows and rollups both
written or both not, and a rollup is always what a GROUP BY over the log would give.

- `run_log_totals`, one row per (prompt, version, model, status, source): counts, tokens,
  cost, first and last time. Stats sum a prompt's rows; counts without a time range sum the
  rows their filters select. Its size grows with the number of versions and models, never
  with the number of calls.
- `run_log_counts`, one row per (model, status): the count of the whole log, and by model
  or status, from a handful of rows.
- `run_log_latency`, one row per (prompt, version, metric, bucket): a fixed-bucket histogram
  of latency_ms and ttft_ms (judge rows left out, as stats leave them out). Percentiles of a
  version with more than EXACT_PERCENTILE_MAX values are read from it: buckets are one
  millisecond wide up to 10 ms, then each about 10% wider than the last up to one hour, and a
  percentile is reported as the middle of the bucket that holds the nearest-rank value, so
  it is within 5% (or 1 ms) of the exact figure; values of an hour and more are reported as
  one hour. A version with fewer values is read exactly from the covering index, at a cost
  bounded by EXACT_PERCENTILE_MAX.

The SQL is the portable subset (`INSERT ... SELECT ... ON CONFLICT ... DO UPDATE`, CASE
instead of MIN/MAX of two values) that SQLite and PostgreSQL both run. Sums of tokens are
taken as REAL so that no sum of 64-bit values can raise an integer overflow in the writer's
transaction (SQLite's SUM raises one, and the writer would retry it forever); DOUBLE PRECISION,
which SQLite reads as REAL, since PostgreSQL's REAL is single precision. PostgreSQL answers
a SUM of integers as a float here (see llmkit.db_postgres): readers take int() of counts.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from llmkit.db import Connection

# Versions with at most this many values get exact nearest-rank percentiles from the index.
EXACT_PERCENTILE_MAX = 1000
# Trace ids per rollup statement: below every SQLite build's variable limit (999).
IDS_PER_STATEMENT = 500
METRICS = ("latency_ms", "ttft_ms")


def _boundaries() -> tuple[int, ...]:
    bounds = [1]
    while bounds[-1] < 3_600_000:
        bounds.append(max(bounds[-1] + 1, round(bounds[-1] * 1.1)))
    return tuple(bounds)


# Bucket k holds values v with BOUNDARIES[k - 1] <= v < BOUNDARIES[k] (bucket 0: v < 1, the
# last bucket: v >= one hour): k = bisect_right(BOUNDARIES, v).
BOUNDARIES = _boundaries()


def bucket_of(value: float) -> int:
    return bisect_right(BOUNDARIES, value)


def bucket_value(bucket: int) -> int:
    """What a percentile that falls in `bucket` is reported as: the middle of its integers."""
    if bucket <= 0:
        return 0
    low = BOUNDARIES[bucket - 1]
    if bucket >= len(BOUNDARIES):
        return low
    return (low + BOUNDARIES[bucket] - 1) // 2


def _bucket_sql(column: str, low: int = 0, high: int = len(BOUNDARIES)) -> str:
    """bucket_of(column) in SQL, as a binary search of nested CASEs (no log() in SQLite)."""
    if low == high:
        return str(low)
    middle = (low + high) // 2
    return (
        f"CASE WHEN {column} < {BOUNDARIES[middle]} THEN {_bucket_sql(column, low, middle)}"
        f" ELSE {_bucket_sql(column, middle + 1, high)} END"
    )


# One text per version, never null (a key column): `d:<blob>` for a draft, else
# `v:<number>:<sha>`, either part empty when missing.
VERSION_KEY = (
    "CASE WHEN draft = 1 THEN 'd:' || COALESCE(draft_blob, '')"
    " ELSE 'v:' || COALESCE(CAST(version_number AS TEXT), '') || ':' || COALESCE(version_sha, '')"
    " END"
)


def version_key(number: int | None, sha: str | None, draft: bool, blob: str | None) -> str:
    if draft:
        return f"d:{blob or ''}"
    return f"v:{'' if number is None else number}:{sha or ''}"


CREATE_TABLES = (
    """
    CREATE TABLE run_log_totals (
        prompt_key TEXT NOT NULL,
        version_key TEXT NOT NULL,
        model TEXT NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        version_number INTEGER,
        version_sha TEXT,
        draft INTEGER NOT NULL,
        draft_blob TEXT,
        n INTEGER NOT NULL,
        latency_n INTEGER NOT NULL,
        ttft_n INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost REAL,
        first_at TEXT NOT NULL,
        last_at TEXT NOT NULL,
        PRIMARY KEY (prompt_key, version_key, model, status, source)
    )
    """,
    """
    CREATE TABLE run_log_counts (
        model TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (model, status)
    )
    """,
    """
    CREATE TABLE run_log_latency (
        prompt_key TEXT NOT NULL,
        version_key TEXT NOT NULL,
        metric TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (prompt_key, version_key, metric, bucket)
    )
    """,
)


# Token sums are DOUBLE PRECISION: a BIGINT sum could overflow (as SQLite's INTEGER column
# does not: it keeps a REAL that does not fit), and the writer would retry it forever.
CREATE_TABLES_POSTGRESQL = (
    """
    CREATE TABLE run_log_totals (
        prompt_key TEXT COLLATE "C" NOT NULL,
        version_key TEXT COLLATE "C" NOT NULL,
        model TEXT NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        version_number BIGINT,
        version_sha TEXT COLLATE "C",
        draft BIGINT NOT NULL,
        draft_blob TEXT COLLATE "C",
        n BIGINT NOT NULL,
        latency_n BIGINT NOT NULL,
        ttft_n BIGINT NOT NULL,
        input_tokens DOUBLE PRECISION NOT NULL,
        output_tokens DOUBLE PRECISION NOT NULL,
        reasoning_tokens DOUBLE PRECISION NOT NULL,
        cost DOUBLE PRECISION,
        first_at TEXT COLLATE "C" NOT NULL,
        last_at TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (prompt_key, version_key, model, status, source)
    )
    """,
    """
    CREATE TABLE run_log_counts (
        model TEXT NOT NULL,
        status TEXT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (model, status)
    )
    """,
    """
    CREATE TABLE run_log_latency (
        prompt_key TEXT COLLATE "C" NOT NULL,
        version_key TEXT COLLATE "C" NOT NULL,
        metric TEXT NOT NULL,
        bucket BIGINT NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (prompt_key, version_key, metric, bucket)
    )
    """,
)


def _later(column: str, keep: str) -> str:
    """The upsert's new value of a MIN (keep '<') or MAX (keep '>') column, portably."""
    ours = f"run_log_totals.{column}"
    new = f"excluded.{column}"
    return f"{column} = CASE WHEN {new} {keep} {ours} THEN {new} ELSE {ours} END"


_TOTALS_COLUMNS = (
    "prompt_key, version_key, model, status, source, version_number, version_sha, draft,"
    " draft_blob, n, latency_n, ttft_n, input_tokens, output_tokens, reasoning_tokens, cost,"
    " first_at, last_at"
)
_TOTALS_UPSERT = f"""
ON CONFLICT (prompt_key, version_key, model, status, source) DO UPDATE SET
    n = run_log_totals.n + excluded.n,
    latency_n = run_log_totals.latency_n + excluded.latency_n,
    ttft_n = run_log_totals.ttft_n + excluded.ttft_n,
    input_tokens = run_log_totals.input_tokens + excluded.input_tokens,
    output_tokens = run_log_totals.output_tokens + excluded.output_tokens,
    reasoning_tokens = run_log_totals.reasoning_tokens + excluded.reasoning_tokens,
    cost = CASE WHEN excluded.cost IS NULL THEN run_log_totals.cost
        WHEN run_log_totals.cost IS NULL THEN excluded.cost
        ELSE run_log_totals.cost + excluded.cost END,
    {_later("first_at", "<")},
    {_later("last_at", ">")}
"""
_COUNTS_UPSERT = "ON CONFLICT (model, status) DO UPDATE SET n = run_log_counts.n + excluded.n"
_LATENCY_UPSERT = (
    "ON CONFLICT (prompt_key, version_key, metric, bucket) DO UPDATE SET"
    " n = run_log_latency.n + excluded.n"
)
# The same upserts with the figures computed by the writer (RollUp) instead of read back.
TOTALS_VALUES = (
    f"INSERT INTO run_log_totals ({_TOTALS_COLUMNS}) VALUES ({', '.join('?' * 18)})"
    f" {_TOTALS_UPSERT}"
)
COUNTS_VALUES = f"INSERT INTO run_log_counts (model, status, n) VALUES (?, ?, ?) {_COUNTS_UPSERT}"
LATENCY_VALUES = (
    "INSERT INTO run_log_latency (prompt_key, version_key, metric, bucket, n)"
    f" VALUES (?, ?, ?, ?, ?) {_LATENCY_UPSERT}"
)


def _totals_sql(rows: str) -> str:
    return f"""
INSERT INTO run_log_totals ({_TOTALS_COLUMNS})
SELECT prompt_key, {VERSION_KEY}, model, status, source,
    MIN(version_number), MIN(version_sha), MIN(draft), MIN(draft_blob),
    COUNT(*), COUNT(latency_ms), COUNT(ttft_ms),
    COALESCE(SUM(CAST(input_tokens AS DOUBLE PRECISION)), 0),
    COALESCE(SUM(CAST(output_tokens AS DOUBLE PRECISION)), 0),
    COALESCE(SUM(CAST(reasoning_tokens AS DOUBLE PRECISION)), 0),
    SUM(cost), MIN(created_at), MAX(created_at)
FROM run_log WHERE {rows}
GROUP BY prompt_key, {VERSION_KEY}, model, status, source
{_TOTALS_UPSERT}"""


def _counts_sql(rows: str) -> str:
    return f"""
INSERT INTO run_log_counts (model, status, n)
SELECT model, status, COUNT(*) FROM run_log WHERE {rows} GROUP BY model, status
{_COUNTS_UPSERT}"""


def _latency_sql(rows: str, metric: str) -> str:
    assert metric in METRICS
    return f"""
INSERT INTO run_log_latency (prompt_key, version_key, metric, bucket, n)
SELECT prompt_key, {VERSION_KEY}, '{metric}', {_bucket_sql(metric)}, COUNT(*)
FROM run_log WHERE {rows} AND {metric} IS NOT NULL AND source != 'judge'
GROUP BY 1, 2, 4
{_LATENCY_UPSERT}"""


def _statements(rows: str) -> tuple[str, ...]:
    return (
        _totals_sql(rows),
        _counts_sql(rows),
        *(_latency_sql(rows, metric) for metric in METRICS),
    )


_BACKFILL = _statements("1 = 1")
_BY_TRACE: dict[int, tuple[str, ...]] = {}


def create_and_backfill(conn: Connection, tables: Sequence[str]) -> None:
    """Create the rollup tables (`CREATE_TABLES`, or `CREATE_TABLES_POSTGRESQL`) and roll up
    every row already logged (in the caller's transaction: a migration's)."""
    for sql in tables:
        conn.execute(sql)
    for sql in _BACKFILL:
        conn.execute(sql)


def roll_up_by_trace(conn: Connection, trace_ids: Sequence[str]) -> None:
    """Add the rows of `trace_ids`, just inserted in `conn`'s open transaction, to the
    rollups, reading them back: for rows whose values RollUp does not take as they are."""
    for start in range(0, len(trace_ids), IDS_PER_STATEMENT):
        chunk = trace_ids[start : start + IDS_PER_STATEMENT]
        statements = _BY_TRACE.get(len(chunk))
        if statements is None:
            marks = ", ".join("?" for _ in chunk)
            statements = _BY_TRACE[len(chunk)] = _statements(f"trace_id IN ({marks})")
        for sql in statements:
            conn.execute(sql, tuple(chunk))


_NEEDED = (
    "trace_id",
    "prompt_key",
    "version_number",
    "version_sha",
    "draft",
    "draft_blob",
    "model",
    "status",
    "source",
    "input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost",
    "latency_ms",
    "ttft_ms",
    "created_at",
)
_NUMBER = (int, float)


class RollUp:
    """The run-log writer's hook: adds the rows a batch transaction stored to the rollups, in
    that transaction. The figures are computed from the values in hand, as the SQL above
    computes them from the table (SUM as REAL, COUNT of non-null, MIN/MAX of the times, the
    same buckets), and upserted: no read of the rows back. A row with a value of a type the
    shaping never produces (a scrubbed row) is read back by trace id instead."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._at = tuple(columns.index(name) for name in _NEEDED)

    def __call__(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        totals: dict[tuple[Any, ...], list[Any]] = {}
        counts: dict[tuple[str, str], int] = {}
        histogram: dict[tuple[str, str, str, int], int] = {}
        odd: list[str] = []
        for values in rows:
            (
                trace,
                prompt,
                number,
                sha,
                draft,
                blob,
                model,
                status,
                source,
                input_tokens,
                output_tokens,
                reasoning_tokens,
                cost,
                latency,
                ttft,
                created_at,
            ) = (values[i] for i in self._at)
            if not _plain(values, self._at):
                odd.append(trace)
                continue
            vkey = version_key(number, sha, bool(draft), blob)
            key = (prompt, vkey, model, status, source)
            entry = totals.get(key)
            if entry is None:
                entry = totals[key] = [number, sha, draft, blob, 0, 0, 0, 0.0, 0.0, 0.0]
                entry += [None, created_at, created_at]
            entry[4] += 1
            entry[5] += latency is not None
            entry[6] += ttft is not None
            entry[7] += float(input_tokens or 0)
            entry[8] += float(output_tokens or 0)
            entry[9] += float(reasoning_tokens or 0)
            if cost is not None:
                entry[10] = (entry[10] or 0.0) + cost
            entry[11] = min(entry[11], created_at)
            entry[12] = max(entry[12], created_at)
            counts[(model, status)] = counts.get((model, status), 0) + 1
            if source != "judge":
                for metric, value in (("latency_ms", latency), ("ttft_ms", ttft)):
                    if value is not None:
                        bucket = (prompt, vkey, metric, bucket_of(value))
                        histogram[bucket] = histogram.get(bucket, 0) + 1
        conn.executemany(TOTALS_VALUES, [(*key, *entry) for key, entry in totals.items()])
        conn.executemany(COUNTS_VALUES, [(*key, n) for key, n in counts.items()])
        conn.executemany(LATENCY_VALUES, [(*key, n) for key, n in histogram.items()])
        if odd:
            roll_up_by_trace(conn, odd)


def _plain(values: tuple[Any, ...], at: tuple[int, ...]) -> bool:
    """Whether the values are of the types shaping gives them (see runlog_rows)."""
    trace, prompt, number, sha, draft, blob, model, status, source = (values[i] for i in at[:9])
    tokens = [values[i] for i in at[9:12]]
    numbers = [values[i] for i in at[12:15]]
    return (
        all(type(v) is str for v in (trace, prompt, model, status, source, values[at[15]]))
        and (number is None or type(number) is int)
        and (sha is None or type(sha) is str)
        and (blob is None or type(blob) is str)
        and draft in (0, 1)
        and all(v is None or type(v) is int for v in tokens)
        and all(v is None or (type(v) in _NUMBER and math.isfinite(v)) for v in numbers)
    )


# Reading

_VERSION_TOTALS = """
SELECT version_key, MIN(version_number) AS version_number, MIN(version_sha) AS version_sha,
       MIN(draft) AS draft, MIN(draft_blob) AS draft_blob,
       SUM(n) AS count,
       SUM(CASE WHEN status = 'error' THEN n ELSE 0 END) AS error_count,
       SUM(latency_n) AS latency_n, SUM(ttft_n) AS ttft_n,
       SUM(input_tokens) AS input_tokens, SUM(output_tokens) AS output_tokens,
       SUM(reasoning_tokens) AS reasoning_tokens, SUM(cost) AS cost,
       MIN(first_at) AS first_at, MAX(last_at) AS last_at
FROM run_log_totals
WHERE prompt_key = ? AND source != 'judge'
GROUP BY version_key
"""


def version_totals(conn: Connection, prompt_key: str) -> list[Any]:
    """One row per version of the prompt (judge rows left out), from the totals rollup."""
    return conn.execute(_VERSION_TOTALS, (prompt_key,)).fetchall()


def histogram_percentile(
    conn: Connection, prompt_key: str, version: str, metric: str, p: int, n: int
) -> int | None:
    """The nearest-rank p-th percentile of one version's `metric` from its histogram: the
    bucket that holds rank ceil(p * n / 100), reported as bucket_value()."""
    assert metric in METRICS
    if n == 0:
        return None
    rank = -(-p * n // 100)
    seen = 0
    buckets = conn.execute(
        "SELECT bucket, n FROM run_log_latency WHERE prompt_key = ? AND version_key = ?"
        " AND metric = ? ORDER BY bucket",
        (prompt_key, version, metric),
    )
    for bucket, count in buckets:
        seen += count
        if seen >= rank:
            return bucket_value(bucket)
    return None


def count(conn: Connection, where: str, params: Sequence[Any], *, by_prompt: bool) -> int:
    """How many rows match filters on columns the rollups hold: a sum over the few rows of
    run_log_counts (filters on model and status only), else over the totals rows of the
    filtered prompt (or of every prompt, when a version is asked for without one)."""
    table = "run_log_totals" if by_prompt else "run_log_counts"
    row = conn.execute(f"SELECT COALESCE(SUM(n), 0) FROM {table}{where}", params).fetchone()
    return int(row[0])
