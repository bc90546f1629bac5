"""Per-version figures of a prompt's runs: counts, tokens and cost, and latency percentiles.

The figures come from rollups that the run-log writer keeps in each batch's transaction
(`runlog_rollup`), so their cost does not grow with the log. Percentiles are nearest-rank: the
p-th percentile of n sorted values is the value at 1-based rank ceil(p * n / 100), so latencies
1..100 give p50 = 50 and p95 = 95. For a version with up to EXACT_PERCENTILE_MAX values each is
one `ORDER BY ... LIMIT 1 OFFSET rank - 1` walk of a covering index on (prompt_key, version,
column); above that, the rollup's latency histogram gives it within 5%.
"""

from __future__ import annotations

from typing import Any

from llmkit import runlog_rollup
from llmkit.db import Connection
from llmkit.runlog_schema import NOT_JUDGE, PERCENTILE_COLUMNS


def version_stats(reader: Connection, prompt_key: str) -> list[dict[str, Any]]:
    """Per-version figures for one prompt, ordered by version number (unnumbered last),
    read from the rollups (see runlog_rollup): exact counts, tokens and cost; exact
    nearest-rank percentiles for a version with up to EXACT_PERCENTILE_MAX values, and
    within 5% from its latency histogram above that. The eval judge's calls about a version
    (source "judge") are not calls of it: left out."""
    result = []
    for row in runlog_rollup.version_totals(reader, prompt_key):
        version = (
            prompt_key,
            row["version_number"],
            row["version_sha"],
            row["draft"],
            row["draft_blob"],
        )
        count = int(row["count"])
        latency_n, ttft_n = int(row["latency_n"]), int(row["ttft_n"])
        result.append(
            {
                "version_number": row["version_number"],
                "version_sha": row["version_sha"],
                "draft": bool(row["draft"]),
                "draft_blob": row["draft_blob"],
                "count": count,
                "error_count": int(row["error_count"]),
                "error_rate": row["error_count"] / count,
                "latency_p50_ms": _version_percentile(
                    reader, row["version_key"], version, "latency_ms", 50, latency_n
                ),
                "latency_p95_ms": _version_percentile(
                    reader, row["version_key"], version, "latency_ms", 95, latency_n
                ),
                "ttft_p50_ms": _version_percentile(
                    reader, row["version_key"], version, "ttft_ms", 50, ttft_n
                ),
                "input_tokens": int(row["input_tokens"]),
                "output_tokens": int(row["output_tokens"]),
                "reasoning_tokens": int(row["reasoning_tokens"]),
                "cost": row["cost"],
                "first_at": row["first_at"],
                "last_at": row["last_at"],
            }
        )
    result.sort(
        key=lambda s: (
            s["version_number"] is None,
            s["version_number"] or 0,
            s["draft"],
            s["first_at"],
        )
    )
    return result


def _version_percentile(
    reader: Connection,
    version_key: str,
    version: tuple[str, int | None, str | None, int, str | None],
    column: str,
    p: int,
    n: int,
) -> float | None:
    """Exact from the index for up to EXACT_PERCENTILE_MAX values, else from the histogram."""
    if n <= runlog_rollup.EXACT_PERCENTILE_MAX:
        return _percentile(reader, column, version, p, n)
    return runlog_rollup.histogram_percentile(reader, version[0], version_key, column, p, n)


def _percentile(
    reader: Connection,
    column: str,
    version: tuple[str, int | None, str | None, int, str | None],
    p: int,
    n: int,
) -> float | None:
    """The nearest-rank p-th percentile of `column` over one version's n non-null values: the
    value at 1-based rank ceil(p * n / 100), read from the covering index."""
    assert column in PERCENTILE_COLUMNS
    if n == 0:
        return None
    rank = -(-p * n // 100)
    row = reader.execute(
        f"SELECT {column} FROM run_log"
        f" WHERE prompt_key = ? AND version_number IS NOT DISTINCT FROM ?"
        f" AND version_sha IS NOT DISTINCT FROM ? AND draft = ?"
        f" AND draft_blob IS NOT DISTINCT FROM ?"
        f" AND {column} IS NOT NULL AND {NOT_JUDGE} ORDER BY {column} LIMIT 1 OFFSET ?",
        (*version, rank - 1),
    ).fetchone()
    return None if row is None else row[0]
